#!/usr/bin/env bash
# Makes one DPU's provisioning file (read by the image at first boot, see
# README.md "Provisioning") and, optionally, its bf.cfg for flashing:
#
#   images/provision.sh --hostname NAME --trust-domain DOMAIN \
#       --server-cert CERT.pem --server-key KEY.pem --trust-bundle CA.pem \
#       [--profile generic|bluefield] [--config config.toml] --out provision.tar \
#       [--bf-cfg bf.cfg [--bf-cfg-template images/bf.cfg.template]]
#
# CERT.pem is the agent's server certificate (chain), issued by the fleet's
# CA for the DPU's names; CA.pem the bundle that signs callers' (fleet
# controller, tenants, host stub) client certificates. --profile (default
# generic) picks the agent config the image installs: generic (veth
# functions, userspace datapath) or bluefield (dpu-agent/config.bluefield.toml,
# shipped in the image); --config gives a config.toml that wins over it. The tar is
# deterministic (sorted, owner 0, mtime 0). Exits non-zero, writing nothing,
# when an input is missing or the key does not match the certificate.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hostname="" domain="" cert="" key="" bundle="" config="" profile=generic out="" bfcfg="" template="$here/bf.cfg.template"
usage() { sed -n '5,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hostname) hostname=${2:-}; shift 2 ;;
        --trust-domain) domain=${2:-}; shift 2 ;;
        --server-cert) cert=${2:-}; shift 2 ;;
        --server-key) key=${2:-}; shift 2 ;;
        --trust-bundle) bundle=${2:-}; shift 2 ;;
        --config) config=${2:-}; shift 2 ;;
        --profile) profile=${2:-}; shift 2 ;;
        --out) out=${2:-}; shift 2 ;;
        --bf-cfg) bfcfg=${2:-}; shift 2 ;;
        --bf-cfg-template) template=${2:-}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "provision.sh: unknown argument $1" >&2; usage ;;
    esac
done
fail() { echo "provision.sh: $*" >&2; exit 1; }
for v in hostname domain cert key bundle out; do
    [ -n "${!v}" ] || fail "--${v/domain/trust-domain} is required"
done
[[ $hostname =~ ^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$ ]] || fail "--hostname \"$hostname\" is not a valid host name"
[[ $domain =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || fail "--trust-domain \"$domain\" must be a bare name like fleet.example.com"
case "$profile" in generic|bluefield) ;; *) fail "--profile \"$profile\" must be generic or bluefield" ;; esac
for f in "$cert" "$key" "$bundle" ${config:+"$config"}; do [ -s "$f" ] || fail "$f is missing or empty"; done
openssl x509 -in "$cert" -noout 2>/dev/null || fail "--server-cert $cert is not a PEM certificate"
openssl x509 -in "$bundle" -noout 2>/dev/null || fail "--trust-bundle $bundle is not a PEM certificate"
cert_pub=$(openssl x509 -in "$cert" -noout -pubkey) || fail "cannot read the public key of $cert"
key_pub=$(openssl pkey -in "$key" -pubout 2>/dev/null) || fail "--server-key $key is not a PEM private key"
[ "$cert_pub" = "$key_pub" ] || fail "--server-key $key does not belong to --server-cert $cert"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
p=$stage/dpu-provision
mkdir -m 0700 "$p"
echo "dpu-provision 1" > "$p/FORMAT"
echo "$hostname" > "$p/hostname"
echo "$domain" > "$p/trust_domain"
cp "$cert" "$p/server.pem"
(umask 077 && cp "$key" "$p/server-key.pem")
cp "$bundle" "$p/ca.pem"
echo "$profile" > "$p/profile"
[ -n "$config" ] && cp "$config" "$p/config.toml"
(umask 077 && tar --sort=name --format=ustar --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$stage" -cf "$out" dpu-provision)
echo "provision.sh: wrote $out for $hostname (trust domain $domain, profile $profile)"
if [ -n "$bfcfg" ]; then
    [ -s "$template" ] || fail "bf.cfg template $template is missing"
    grep -q '^@PROVISION_TAR_BASE64@$' "$template" || fail "$template has no @PROVISION_TAR_BASE64@ line"
    (umask 077 && awk -v b64="$(base64 -w 76 "$out")" '$0 == "@PROVISION_TAR_BASE64@" {print b64; next} {print}' \
        "$template" > "$bfcfg")
    echo "provision.sh: wrote $bfcfg (holds the private key: mode 0600)"
fi
