#!/usr/bin/env bash
# usage: container.sh start BASE NAME     boot systemd in new namespaces; prints its host PID
#        container.sh stage2 BASE NAME    (internal: PID 1 of the new PID namespace)
#        container.sh exec PID CMD...     run CMD inside the container
#        container.sh stop PID BASE NAME  power off, clean up
#
# A real systemd (the machine's own, Debian 12) booted as PID 1 of a new PID, mount,
# UTS, IPC and cgroup namespace over an overlay copy of /, for the unit tests. The host's
# own PID 1, /etc and network are never touched (no --net: the container shares the
# host's network, so test servers bind to 127.0.0.1). Needs root. After
# shared/notes/systemd-in-a-namespace.md. MATERIA_CONTAINER_BINDS: host dirs (space-
# separated) to bind inside, read-only, at the same path or at DST with SRC:DST (SRC:DST:rw
# for read-write), for what the overlay hides (a checkout under /tmp, which the container gets fresh; a toolchain
# under /root, which ProtectHome= hides from the units).
set -euo pipefail

cgroup_root() {
    if [[ -d /sys/fs/cgroup/unified ]]; then echo /sys/fs/cgroup/unified; else echo /sys/fs/cgroup; fi
}

case ${1:-} in
start)
    base=${2:?BASE} name=${3:?NAME}
    mkdir -p "$base"/{upper,work,root}
    up=$base/upper
    mkdir -p "$up/etc/systemd/system" "$up/var/log/journal"
    echo "$name" >"$up/etc/hostname"
    tr -d '-' </proc/sys/kernel/random/uuid >"$up/etc/machine-id"
    # Noise the tests do not need; never systemd-logind (poweroff needs it).
    for u in getty@.service console-getty.service systemd-timesyncd.service systemd-networkd.service \
        systemd-networkd.socket networking.service systemd-pstore.service postgresql.service \
        e2scrub_all.timer e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
        apt-daily-upgrade.service dpkg-db-backup.timer fstrim.timer man-db.timer ssh.service sshd.service \
        cron.service rsyslog.service systemd-resolved.service; do
        ln -sf /dev/null "$up/etc/systemd/system/$u"
    done
    for w in /etc/systemd/system/*.wants/*; do
        [[ -e $w ]] || continue
        u=$(basename "$w")
        [[ $u == *.target ]] || ln -sf /dev/null "$up/etc/systemd/system/$u"
    done
    cg=$(cgroup_root)/materia-test-$name
    mkdir -p "$cg"
    unshare --pid --fork --kill-child=SIGKILL --mount --propagation private --uts --ipc \
        "$0" stage2 "$base" "$name" >"$base/console.log" 2>&1 &
    for _ in $(seq 200); do
        [[ -s $base/pid ]] && break
        sleep 0.05
    done
    pid=$(cat "$base/pid")
    for _ in $(seq 600); do
        state=$(nsenter --target "$pid" --mount --uts --ipc --pid --cgroup -- systemctl is-system-running 2>/dev/null || true)
        case $state in running|degraded) echo "$pid"; exit 0 ;; esac
        sleep 0.1
    done
    echo "container.sh: systemd did not come up (state: ${state:-none}); see $base/console.log" >&2
    exit 1
    ;;
stage2)
    base=${2:?} name=${3:?}
    cg=$(cgroup_root)/materia-test-$name
    if [[ ${MATERIA_STAGE:-} != 2b ]]; then
        # Our host PID, read before /proc is replaced.
        read -r hostpid _ </proc/self/stat
        echo "$hostpid" >"$base/pid"
        echo 0 >"$cg/cgroup.procs"
        MATERIA_STAGE=2b exec unshare --cgroup "$0" stage2 "$base" "$name"
    fi
    root=$base/root
    mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
    mount -t proc proc "$root/proc"
    mount --bind "$root/proc/sys" "$root/proc/sys" && mount -o remount,bind,ro "$root/proc/sys"
    [[ -e $root/proc/sysrq-trigger ]] && mount --bind "$root/proc/sysrq-trigger" "$root/proc/sysrq-trigger" &&
        mount -o remount,bind,ro "$root/proc/sysrq-trigger"
    mount --bind /sys "$root/sys" && mount -o remount,bind,ro "$root/sys"
    mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
    mount -t tmpfs -o mode=755,size=16m tmpfs "$root/dev"
    for d in null zero full random urandom tty; do
        touch "$root/dev/$d"
        mount --bind "/dev/$d" "$root/dev/$d"
    done
    mkdir -p "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
    ln -sf pts/ptmx "$root/dev/ptmx"
    mount -t tmpfs tmpfs "$root/dev/shm"
    ln -sf /proc/self/fd "$root/dev/fd"
    ln -sf /proc/self/fd/0 "$root/dev/stdin"
    ln -sf /proc/self/fd/1 "$root/dev/stdout"
    ln -sf /proc/self/fd/2 "$root/dev/stderr"
    mount -t tmpfs -o mode=755 tmpfs "$root/run"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    for spec in ${MATERIA_CONTAINER_BINDS:-}; do
        IFS=: read -r src dst mode <<<"$spec"
        dst=${dst:-$src}
        mkdir -p "$root$dst"
        mount --bind "$src" "$root$dst"
        [[ $mode == rw ]] || mount -o remount,bind,ro "$root$dst"
    done
    mkdir -p "$root/.oldroot"
    cd "$root"
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot || true
    exec env -i container="materia-$name" \
        setpriv --inh-caps=-all --bounding-set=-sys_module,-sys_rawio,-sys_time,-sys_boot,-mknod,-audit_control,-mac_admin,-mac_override,-syslog,-wake_alarm \
        /lib/systemd/systemd --system --unit=multi-user.target
    ;;
exec)
    pid=${2:?PID}
    shift 2
    exec nsenter --target "$pid" --mount --uts --ipc --pid --cgroup -- "$@"
    ;;
stop)
    pid=${2:?PID} base=${3:?BASE} name=${4:?NAME}
    nsenter --target "$pid" --mount --uts --ipc --pid --cgroup -- systemctl poweroff --no-block >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    sleep 0.2
    # systemd made child cgroups in ours: remove them deepest first.
    find "$(cgroup_root)/materia-test-$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
