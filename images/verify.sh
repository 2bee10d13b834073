#!/usr/bin/env bash
# Checks an image directory made by images/build.sh, with sha256sum and
# openssl only (independent of the Rust code that wrote it):
#
#   images/verify.sh DIR [--public-key KEY.pem]
#
# 1. manifest.json.sig is a valid Ed25519 signature of manifest.json under
#    KEY.pem (default: DIR/manifest.pub.pem, which proves integrity only;
#    pass the key you trust to prove origin);
# 2. every artifact line of the manifest matches the file's sha256 and size;
# 3. DIR holds no file the manifest does not list.
# Exit status 0 when all hold, 1 on any mismatch (each one printed).
set -euo pipefail
dir="" pub=""
while [ $# -gt 0 ]; do
    case "$1" in
        --public-key) pub=${2:?--public-key needs a file}; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) [ -z "$dir" ] || { echo "verify.sh: one directory only" >&2; exit 2; }; dir=$1; shift ;;
    esac
done
[ -n "$dir" ] || { echo "usage: images/verify.sh DIR [--public-key KEY.pem]" >&2; exit 2; }
manifest=$dir/manifest.json
sig=$dir/manifest.json.sig
[ -n "$pub" ] || pub=$dir/manifest.pub.pem
for f in "$manifest" "$sig" "$pub"; do
    [ -f "$f" ] || { echo "verify.sh: FAIL $f is missing" >&2; exit 1; }
done

if ! out=$(openssl pkeyutl -verify -pubin -inkey "$pub" -rawin -in "$manifest" -sigfile "$sig" 2>&1); then
    echo "verify.sh: FAIL signature of $manifest does not verify with $pub: $out" >&2
    exit 1
fi
echo "verify.sh: signature ok ($pub)"

# The signature covers these exact bytes, so the writer's layout holds: one
# {"path":...,"sha256":...,"size":...} object per line.
bad=0
listed=$(mktemp)
trap 'rm -f "$listed"' EXIT
n=0
while IFS=$'\t' read -r path sha size; do
    n=$((n + 1))
    echo "$path" >> "$listed"
    case "$path" in */*|.*|"") echo "verify.sh: FAIL manifest lists an unsafe path \"$path\"" >&2; bad=1; continue ;; esac
    f=$dir/$path
    if [ ! -f "$f" ]; then
        echo "verify.sh: FAIL $path is listed but missing" >&2; bad=1; continue
    fi
    have_size=$(stat -c %s "$f")
    if [ "$have_size" != "$size" ]; then
        echo "verify.sh: FAIL $path is $have_size bytes, the manifest says $size" >&2; bad=1; continue
    fi
    have_sha=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$have_sha" != "$sha" ]; then
        echo "verify.sh: FAIL $path sha256 $have_sha, the manifest says $sha" >&2; bad=1; continue
    fi
    echo "verify.sh: ok $path"
done < <(sed -n 's/^ *{"path":"\([^"]*\)","sha256":"\([0-9a-f]\{64\}\)","size":\([0-9]*\)},\{0,1\}$/\1\t\2\t\3/p' "$manifest")
if [ "$n" = 0 ]; then
    echo "verify.sh: FAIL the manifest lists no artifacts" >&2
    exit 1
fi
for f in "$dir"/* "$dir"/.[!.]*; do
    [ -e "$f" ] || continue
    name=${f##*/}
    case "$name" in manifest.json|manifest.json.sig|manifest.pub.pem) continue ;; esac
    grep -qxF "$name" "$listed" || { echo "verify.sh: FAIL $name is not listed in the manifest" >&2; bad=1; }
done
if [ "$bad" != 0 ]; then
    echo "verify.sh: FAILED ($dir)" >&2
    exit 1
fi
echo "verify.sh: all $n artifacts match ($dir)"
