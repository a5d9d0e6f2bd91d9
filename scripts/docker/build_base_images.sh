#!/usr/bin/env bash
# Build ModelGate's local base images from Debian packages, for machines that reach the Debian archive
# but no container registry (python:3.11-slim and redis:7 cannot be pulled there):
#
#   modelgate/python:3.11-bookworm  python3 (3.11), python3-venv, ca-certificates   ($MODELGATE_BASE_IMAGE)
#   modelgate/redis:7-bookworm      redis-server 7 (+ redis-cli)                     ($MODELGATE_REDIS_IMAGE)
#   modelgate/prometheus:bookworm   prometheus 2 (+ promtool), busybox's wget        ($MODELGATE_PROMETHEUS_IMAGE)
#
# Each is a minimal bookworm rootfs (debootstrap --variant=minbase) with docs and caches trimmed,
# `docker import`ed with the ENV/CMD a Dockerfile base needs. The mirror is the one this machine's apt
# uses (read at run time, see lib.sh). Rootfs tarballs are cached in
# ${MODELGATE_CACHE_DIR:-~/.cache/modelgate}/docker/, named by a key over their inputs; an image whose
# org.modelgate.base-key label already equals the key is not rebuilt. The key does not see Debian point
# releases: MODELGATE_BASE_REFRESH=1 rebuilds from fresh packages.
#
# Usage: scripts/docker/build_base_images.sh [python|redis|prometheus]...   (default: all three)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker/lib.sh
source "$HERE/lib.sh"

SUITE=bookworm
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
# Bump when the recipe below changes in a way that must rebuild the images.
RECIPE_REV=1
PYTHON_IMAGE="${MODELGATE_BASE_IMAGE:-modelgate/python:3.11-bookworm}"
REDIS_IMAGE="${MODELGATE_REDIS_IMAGE:-modelgate/redis:7-bookworm}"
PROMETHEUS_IMAGE="${MODELGATE_PROMETHEUS_IMAGE:-modelgate/prometheus:bookworm}"
DEBS_CACHE="$DOCKER_STATE_DIR/debootstrap-debs"

# name | image | packages | docker import --change lines (separated by ';;')
PATH_ENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
declare -A PACKAGES=(
    # python-is-python3: `python` works as in the official image; netbase: /etc/services, /etc/protocols.
    [python]="python3,python3-venv,python-is-python3,ca-certificates,netbase"
    [redis]="redis-server,netbase"
    # busybox: `busybox wget` is the health check, the same command as in the public prom/prometheus.
    [prometheus]="prometheus,busybox,netbase"
)
declare -A IMAGE=([python]="$PYTHON_IMAGE" [redis]="$REDIS_IMAGE" [prometheus]="$PROMETHEUS_IMAGE")
declare -A CHANGES=(
    [python]="$PATH_ENV;;ENV LANG=C.UTF-8;;CMD [\"python3\"]"
    # Same contract as the official redis image: data in /data, runs as the redis user. Protected mode
    # and persistence are set on the command line by compose.yaml.
    [redis]="$PATH_ENV;;ENV LANG=C.UTF-8;;USER redis;;WORKDIR /data;;VOLUME /data;;EXPOSE 6379;;CMD [\"redis-server\", \"--protected-mode\", \"no\"]"
    # Same contract as prom/prometheus: data in /prometheus, not root; compose.yaml sets the flags.
    [prometheus]="$PATH_ENV;;ENV LANG=C.UTF-8;;USER prometheus;;WORKDIR /prometheus;;VOLUME /prometheus;;EXPOSE 9090;;CMD [\"prometheus\", \"--config.file=/etc/prometheus/prometheus.yml\", \"--storage.tsdb.path=/prometheus\"]"
)

# Image-specific steps after debootstrap, run on the rootfs.
post_python() { :; }
post_redis() {
    # The redis user comes from the package's postinst; /data must be its own, as in the official image
    # (a new named volume mounted there copies this ownership).
    as_root chroot "$1" sh -c 'mkdir -p /data && chown redis:redis /data && chmod 0750 /data'
}
post_prometheus() {
    # The prometheus user comes from the package's postinst; a new named volume at /prometheus copies
    # this ownership, as with the public image's nobody-owned /prometheus.
    as_root chroot "$1" sh -c 'mkdir -p /prometheus && chown prometheus:prometheus /prometheus && chmod 0750 /prometheus'
}

# The key covers the inputs and the code of the steps that shape the rootfs.
key_of() {
    local name=$1
    {
        printf '%s\n' "$RECIPE_REV" "$SUITE" "$ARCH" minbase "${PACKAGES[$name]}" "${CHANGES[$name]}"
        declare -f trim_rootfs "post_$name"
    } | sha256sum | cut -c1-16
}

image_key() {
    docker image inspect --format '{{ index .Config.Labels "org.modelgate.base-key" }}' "$1" 2>/dev/null || true
}

# Remove what a container never needs. Copyright files stay (licences).
trim_rootfs() {
    local root=$1
    as_root find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
    as_root find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    as_root rm -rf "$root"/usr/share/{man,info,lintian,linda,locale}/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
        "$root"/tmp/* "$root"/var/tmp/*
    as_root find "$root/var/log" -type f -exec truncate -s 0 {} +
    # Host-specific files that debootstrap copies in; Docker provides its own at run time.
    as_root sh -c ": >'$root/etc/resolv.conf'; : >'$root/etc/hostname'; : >'$root/etc/machine-id'"
    # Keep later `apt-get install`s in derived images just as lean.
    as_root sh -c "cat >'$root/etc/dpkg/dpkg.cfg.d/01-modelgate-nodoc'" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    as_root sh -c "cat >'$root/etc/apt/apt.conf.d/01-modelgate-nocache'" <<'EOF'
APT::Install-Recommends "false";
Binary::apt::APT::Keep-Downloaded-Packages "false";
EOF
}

build_one() {
    local name=$1 image=${IMAGE[$1]} key tarball rootfs
    key="$(key_of "$name")"
    tarball="$DOCKER_STATE_DIR/rootfs-$name-$SUITE-$key.tar.gz"

    if [[ "${MODELGATE_BASE_REFRESH:-0}" == 1 ]]; then
        rm -f "$tarball"
    elif [[ "$(image_key "$image")" == "$key" ]]; then
        log "$image is up to date (key $key), skipping"
        return
    fi

    if [[ -f "$tarball" ]]; then
        log "$image: using cached rootfs $tarball"
    else
        local mirror started=$SECONDS
        mirror="$(debian_mirror)"
        rootfs="$DOCKER_STATE_DIR/rootfs-$name.tmp"
        as_root rm -rf "$rootfs"
        mkdir -p "$DEBS_CACHE"
        log "$image: debootstrap $SUITE minbase + ${PACKAGES[$name]} from $mirror"
        # debootstrap's `I:` lines are the progress; its one-line-per-package ones are left out.
        as_root debootstrap --variant=minbase --arch="$ARCH" --include="${PACKAGES[$name]}" \
            --cache-dir="$DEBS_CACHE" "$SUITE" "$rootfs" "$mirror" |
            awk -v tag="    [$name] " '
                /^I: (Retrieving|Validating) [^ ]+ [^ ]+$/ && !/Packages|Release/ { next }
                /^I: (Extracting|Unpacking|Configuring) [^ ]+\.\.\.$/ { next }
                { print tag $0; fflush() }'
        log "$image: trimming docs and caches"
        "post_$name" "$rootfs"
        trim_rootfs "$rootfs"
        log "$image: packing rootfs ($(as_root du -sh "$rootfs" | cut -f1))"
        as_root tar --numeric-owner -C "$rootfs" -czf "$tarball.part" .
        as_root chown "$(id -u):$(id -g)" "$tarball.part"
        mv "$tarball.part" "$tarball"
        as_root rm -rf "$rootfs"
        # Older tarballs of this image are dead weight.
        find "$DOCKER_STATE_DIR" -maxdepth 1 -name "rootfs-$name-$SUITE-*.tar.gz" ! -name "${tarball##*/}" -delete
        log "$image: rootfs built in $((SECONDS - started))s ($(du -h "$tarball" | cut -f1) compressed)"
    fi

    local change_args=() changes=() change
    mapfile -t changes <<<"${CHANGES[$name]//;;/$'\n'}"
    for change in "${changes[@]}"; do change_args+=(--change "$change"); done
    change_args+=(--change "LABEL org.modelgate.base-key=$key"
        --change "LABEL org.opencontainers.image.description=\"ModelGate local $name base ($SUITE minbase)\"")
    log "$image: docker import"
    docker import "${change_args[@]}" --message "modelgate base $name $key" "$tarball" "$image" >/dev/null
    log "$image: ready ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

main() {
    local names=("$@")
    [[ ${#names[@]} -gt 0 ]] || names=(python redis prometheus)
    command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/docker/setup_docker.sh"
    docker_answers || die "no Docker daemon answers: run scripts/docker/setup_docker.sh"
    mkdir -p "$DOCKER_STATE_DIR"
    exec 8>"$DOCKER_STATE_DIR/base-images.lock"
    flock 8
    local name
    for name in "${names[@]}"; do
        [[ -n "${PACKAGES[$name]:-}" ]] || die "unknown base image '$name' (python, redis, prometheus)"
        build_one "$name"
    done
}

main "$@"
