#!/bin/sh
# The busybox tier's boot (init's sysinit): mounts, kernel modules, the
# provisioning file, the network, then Open vSwitch (creating or upgrading
# its database). init then starts the agent (run-agent) and restarts it
# whenever it exits. Every step logs to the console as "dpu-image: ...".
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
log() { echo "dpu-image: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# The initramfs moved /proc, /sys and /dev here; mount them when it did not.
[ -e /proc/self ] || mount -t proc proc /proc
mounted() { grep -q " $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -o remount,rw /
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/openvswitch /run/netns /var/log/openvswitch /var/lib/dpu-agent
log "root mounted at $(uptime_s)s"

for m in $(grep -v '^#' /etc/modules-load.d/*.conf); do
    modprobe "$m" || log "module $m did not load"
done

/usr/lib/dpu-image/provision apply || log "provisioning failed (see above); the agent waits for an identity"
hostname -F /etc/hostname
ip link set lo up

# DHCP on every Ethernet port; udhcpc keeps trying in the background.
for dev in /sys/class/net/*; do
    name=${dev##*/}
    [ "$(cat "$dev/type")" = 1 ] || continue
    ip link set "$name" up
    udhcpc -b -q -t 5 -T 1 -S -i "$name" -p "/run/udhcpc.$name.pid" \
        -s /usr/lib/dpu-image/udhcpc.script >/dev/null 2>&1
done

# Open vSwitch: the database is created on first boot and converted after
# an upgrade changed the schema.
db=/etc/openvswitch/conf.db
schema=/usr/share/openvswitch/vswitch.ovsschema
if [ ! -e "$db" ]; then
    ovsdb-tool create "$db" "$schema" && log "created $db"
elif [ "$(ovsdb-tool needs-conversion "$db" "$schema")" = yes ]; then
    ovsdb-tool convert "$db" "$schema" && log "converted $db to the new schema"
fi
ovsdb-server "$db" --remote=punix:/run/openvswitch/db.sock \
    --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
    --pidfile --detach --monitor --log-file=/var/log/openvswitch/ovsdb-server.log \
    || log "ovsdb-server did not start"
ovs-vsctl --no-wait init
ovs-vsctl --no-wait set Open_vSwitch . "external-ids:hostname=$(hostname)"
ovs-vswitchd unix:/run/openvswitch/db.sock --pidfile --detach --monitor \
    --log-file=/var/log/openvswitch/ovs-vswitchd.log || log "ovs-vswitchd did not start"
log "Open vSwitch $(ovs-vswitchd --version | head -1 | awk '{print $NF}') up at $(uptime_s)s"
