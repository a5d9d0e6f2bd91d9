#!/usr/bin/env bash
# Make `docker` and `docker compose` usable on this machine. Idempotent; used by CI and developers.
#
#   1. installs what is missing: Debian's docker.io (dockerd, containerd, runc, CLI) and debootstrap,
#      and Compose v2 (Debian trixie's docker-compose package: a static Go binary that only needs
#      libc6 >= 2.34, so it installs cleanly on bookworm, which has no Compose v2 package);
#   2. starts dockerd in the background ONLY when no daemon answers `docker info`, logs to
#      $MODELGATE_CACHE_DIR/docker/dockerd.log and records in dockerd.state that we started it, so that
#      scripts/docker/stop_docker.sh stops that daemon and never someone else's.
#
# What dockerd needed in the ModelGate dev sandbox (Firecracker VM, Debian bookworm, kernel 6.x, ext4
# root, cgroup v1 hierarchy + an empty cgroup2 mount, iptables 1.8.9 with the nf_tables backend, no
# systemd): nothing special. overlay2 works on the ext4 root (d_type ok), bridge networks, embedded DNS,
# published ports (iptables DNAT + docker-proxy), memory/CPU limits all work with the defaults. The
# probes below exist for the sandboxes where that is not true:
#   - storage: overlay2 needs a backing filesystem that supports overlay upper dirs; on overlayfs roots
#     (docker-in-docker, some CI containers) it does not -> fuse-overlayfs when /dev/fuse exists, else vfs
#     (works everywhere, but every layer is a full copy: slow and big). Force with
#     MODELGATE_DOCKER_STORAGE_DRIVER=overlay2|fuse-overlayfs|vfs.
#   - iptables: dockerd calls `iptables` from PATH. When the default (nf_tables) backend cannot talk to
#     the kernel we point dockerd at iptables-legacy through a private PATH dir instead of changing the
#     system alternatives; if neither works dockerd runs with --iptables=false (published ports then still
#     work through docker-proxy on the host, but containers cannot reach the outside world).
#   - bridge: compose needs to create bridge networks; without bridge support in the kernel we stop
#     with a clear error instead of letting `compose up` fail later.
#   - cgroups: dockerd needs a mounted cgroup hierarchy; when /sys/fs/cgroup is empty we mount cgroup2.
# The host MTU here is 1400 (eth0); the containers only talk to each other and to the host, so the
# default 1500 on the bridges does not matter. Builds never reach the network (offline wheelhouse).
#
# Env: MODELGATE_CACHE_DIR (default ~/.cache/modelgate), MODELGATE_DOCKER_STORAGE_DRIVER,
#      MODELGATE_DOCKER_NO_INSTALL=1 (only start the daemon), MODELGATE_DEBIAN_MIRROR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker/lib.sh
source "$HERE/lib.sh"

STATE_FILE="$DOCKER_STATE_DIR/dockerd.state"
DOCKERD_LOG="$DOCKER_STATE_DIR/dockerd.log"
mkdir -p "$DOCKER_STATE_DIR"

# Two developers (or make -j) running this at once must not start two daemons.
exec 9>"$DOCKER_STATE_DIR/setup.lock"
flock 9

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_root apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

compose_v2_available() {
    docker compose version >/dev/null 2>&1 && return 0
    # A standalone docker-compose binary is fine too, as long as it is v2.
    command -v docker-compose >/dev/null && docker-compose version 2>/dev/null | grep -q 'v\?2\.'
}

# Compose v2 from Debian trixie. We download only that one .deb with a throwaway apt configuration
# (its own sources list and lists dir under a temp dir), so the machine's apt sources and pinning stay
# untouched, then let apt install the local file (it checks the libc6 dependency).
install_compose_from_trixie() {
    local mirror tmp opts
    mirror="$(debian_mirror)"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$tmp/sources.list"
    opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::Archives=$tmp/archives"
        -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o "APT::Sandbox::User=root")
    log "Compose v2: fetching docker-compose from Debian trixie ($mirror)"
    apt-get "${opts[@]}" -q update
    (cd "$tmp" && apt-get "${opts[@]}" -q download docker-compose)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$tmp"/docker-compose_*.deb
}

install_missing() {
    local pkgs=()
    command -v dockerd >/dev/null || pkgs+=(docker.io)
    command -v docker >/dev/null || pkgs+=(docker.io)
    command -v debootstrap >/dev/null || pkgs+=(debootstrap)
    command -v iptables >/dev/null || pkgs+=(iptables)
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        # shellcheck disable=SC2046
        apt_install $(printf '%s\n' "${pkgs[@]}" | sort -u)
    else
        log "docker, dockerd and debootstrap are installed"
    fi
    if compose_v2_available; then
        log "Compose v2 is installed ($(docker compose version 2>/dev/null || docker-compose version))"
    else
        install_compose_from_trixie
        compose_v2_available || die "Compose v2 still not available after installing docker-compose"
    fi
}

# --- what this sandbox supports -------------------------------------------------------------------

pick_storage_driver() {
    if [[ -n "${MODELGATE_DOCKER_STORAGE_DRIVER:-}" ]]; then
        echo "$MODELGATE_DOCKER_STORAGE_DRIVER"
        return
    fi
    # Try a real overlay mount on the filesystem that will hold /var/lib/docker.
    local root=/var/lib/docker probe ok=1
    as_root mkdir -p "$root"
    probe="$(as_root mktemp -d "$root/.overlay-probe.XXXXXX")"
    as_root mkdir -p "$probe"/{lower,upper,work,merged}
    as_root mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null || ok=0
    [[ $ok -eq 1 ]] && as_root umount "$probe/merged"
    as_root rm -rf "$probe"
    if [[ $ok -eq 1 ]]; then
        echo overlay2
    elif [[ -e /dev/fuse ]]; then
        command -v fuse-overlayfs >/dev/null || apt_install fuse-overlayfs >&2
        echo fuse-overlayfs
    else
        echo vfs
    fi
}

# Sets DOCKERD_EXTRA_ARGS / IPTABLES_PATH_DIR (a PATH dir put first for dockerd, see header).
DOCKERD_EXTRA_ARGS=()
IPTABLES_PATH_DIR=""
pick_iptables_args() {
    if as_root iptables -t nat -L -n >/dev/null 2>&1; then
        return
    fi
    if command -v iptables-legacy >/dev/null && as_root iptables-legacy -t nat -L -n >/dev/null 2>&1; then
        IPTABLES_PATH_DIR="$DOCKER_STATE_DIR/iptables-legacy-bin"
        mkdir -p "$IPTABLES_PATH_DIR"
        local t
        for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
            [[ -x "/usr/sbin/$t-legacy" ]] && ln -sf "/usr/sbin/$t-legacy" "$IPTABLES_PATH_DIR/$t"
        done
        warn "iptables (nf_tables) does not work here; dockerd will use iptables-legacy"
        return
    fi
    warn "no working iptables: dockerd runs with --iptables=false (published ports via docker-proxy only)"
    DOCKERD_EXTRA_ARGS+=(--iptables=false --ip6tables=false)
}

check_bridge_support() {
    local name="mgprobe$$"
    if as_root ip link add "$name" type bridge 2>/dev/null; then
        as_root ip link del "$name"
    else
        die "the kernel refuses to create bridge interfaces: compose's networks cannot work here"
    fi
}

check_cgroups() {
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        log "cgroups: v2 (unified)"
    elif [[ -d /sys/fs/cgroup/memory ]]; then
        log "cgroups: v1 (memory/cpu controllers present: container limits work)"
    else
        warn "no cgroup hierarchy mounted at /sys/fs/cgroup; mounting cgroup2"
        as_root mount -t cgroup2 none /sys/fs/cgroup || die "could not mount cgroup2"
    fi
}

# --- the daemon ------------------------------------------------------------------------------------

# "pid starttime" of a live process, so that a recycled pid is never mistaken for our dockerd.
proc_identity() {
    local pid=$1
    [[ -r "/proc/$pid/stat" ]] || return 1
    # Field 22 of /proc/PID/stat is the start time; the comm field (2) may contain spaces, so cut
    # after the closing parenthesis.
    echo "$pid $(sed -E 's/^.*\) //' "/proc/$pid/stat" | awk '{print $20}')"
}

start_dockerd() {
    if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != unix:///var/run/docker.sock && "$DOCKER_HOST" != unix:///run/docker.sock ]]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local daemon for a remote one"
    fi
    if as_root test -S /var/run/docker.sock && as_root test -f /var/run/docker.pid; then
        local other
        other=$(as_root cat /var/run/docker.pid)
        if [[ -d "/proc/$other" ]]; then
            # A daemon exists but does not answer us: maybe starting, maybe permissions. Give it time
            # rather than starting a second one.
            log "a dockerd (pid $other) exists but does not answer yet; waiting for it"
            wait_for_daemon 60 "$other" || die "dockerd pid $other does not answer (permissions on /var/run/docker.sock?)"
            return
        fi
    fi

    check_cgroups
    check_bridge_support
    local driver
    driver="$(pick_storage_driver)"
    pick_iptables_args
    log "starting dockerd (storage driver: $driver), log: $DOCKERD_LOG"

    local path="$PATH"
    [[ -n "$IPTABLES_PATH_DIR" ]] && path="$IPTABLES_PATH_DIR:$PATH"
    echo "---- $(date -Is) starting dockerd --storage-driver=$driver ${DOCKERD_EXTRA_ARGS[*]}" >>"$DOCKERD_LOG"
    # setsid: the daemon must outlive this script, the make process and the terminal. With job control
    # off, the background child is not a process-group leader, so setsid execs in place and $! is the
    # dockerd pid itself. Every inherited fd above 2 is closed first: dockerd would otherwise keep our
    # flock (fd 9) forever, and a caller's pipe open (a `make ... | tee` that never ends).
    local pid launcher
    # shellcheck disable=SC2016
    launcher='for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
        nohup setsid dockerd "$@" </dev/null >>"$DOCKERD_LOG" 2>&1 & echo $!'
    pid=$(as_root env PATH="$path" DOCKERD_LOG="$DOCKERD_LOG" bash -c "$launcher" \
        dockerd --storage-driver="$driver" "${DOCKERD_EXTRA_ARGS[@]}")
    sleep 0.5
    local ident
    ident=$(proc_identity "$pid") || { tail -n 30 "$DOCKERD_LOG" >&2; die "dockerd exited at once"; }
    printf '%s\n' "$ident" >"$STATE_FILE"

    if ! wait_for_daemon 90 "$pid"; then
        tail -n 40 "$DOCKERD_LOG" >&2
        rm -f "$STATE_FILE"
        die "dockerd did not answer within 90s (log above: $DOCKERD_LOG)"
    fi
    log "dockerd is up (pid $pid, started by us; stop it with scripts/docker/stop_docker.sh)"
}

wait_for_daemon() {
    local limit=$1 pid=$2 i
    for ((i = 0; i < limit * 2; i++)); do
        docker_answers && return 0
        [[ -d "/proc/$pid" ]] || return 1
        ((i % 10 == 9)) && log "waiting for dockerd ($((i / 2 + 1))s)"
        sleep 0.5
    done
    return 1
}

main() {
    [[ "${MODELGATE_DOCKER_NO_INSTALL:-0}" == 1 ]] || install_missing

    # Forget a recorded daemon that is gone (crashed, machine rebooted).
    if [[ -f "$STATE_FILE" ]]; then
        read -r pid start <"$STATE_FILE" || true
        if [[ "$(proc_identity "${pid:-0}" 2>/dev/null || true)" != "${pid:-} ${start:-}" ]]; then
            rm -f "$STATE_FILE"
        fi
    fi

    if docker_answers; then
        if [[ -f "$STATE_FILE" ]]; then
            log "dockerd is running (started by us earlier: pid $(cut -d' ' -f1 "$STATE_FILE"))"
        else
            log "a Docker daemon already answers (not ours: stop_docker.sh will leave it alone)"
        fi
    else
        start_dockerd
    fi
    docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}' >&2
    docker info --format 'storage driver: {{.Driver}}, cgroups v{{.CgroupVersion}}' >&2
    log "compose: $(docker compose version 2>/dev/null || docker-compose version)"
}

main "$@"
