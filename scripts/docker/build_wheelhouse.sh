#!/usr/bin/env bash
# Fill build/wheelhouse/ (git-ignored, sent in the docker build context) with a wheel for every runtime
# dependency of every image, resolved on the host, where pip reaches the package index. The Dockerfiles
# then install with `--no-index --find-links` (build arg WHEELHOUSE=1): `pip` inside `docker build`
# needs no network at all.
#
# Wheels are resolved per requirements file (each service is its own pip resolution, as in its image),
# plus setuptools/wheel so pip can build the repo's own packages (core, the services) offline. It is
# rebuilt from scratch (reusing the old wheels as a local source) whenever a requirements file, the
# Python version or this recipe changes, so wheels of old pins do not pile up in the build context.
#
# pip on the host evaluates environment markers for the HOST's Python, never for the image's (pip's
# --python-version does not change markers). Bookworm's python3 is 3.11.2, and e.g. redis requires
# `async-timeout; python_full_version < "3.11.3"`, which a 3.11.7 host never fetches. So the wheelhouse
# is then checked with the image's own interpreter: an offline `pip install --dry-run` in a throwaway
# container (no network) of the target base image; whatever it cannot find is fetched on the host and
# the check runs again. Skipped, with a warning, when no daemon answers or the image is missing.
#
# Env: PYTHON (a Python 3.11: the images run 3.11, and wheels of sdists are built for the host's
#      version), TORCH_INDEX_URL (extra index for torch's CPU wheels; default: pip's own configuration),
#      MODELGATE_BASE_IMAGE (the image the wheels are for; default modelgate/python:3.11-bookworm).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/docker/lib.sh
source "$HERE/lib.sh"
cd "$ROOT"

WHEELHOUSE=build/wheelhouse
RECIPE_REV=1
REQS=(core/requirements.txt gateway/requirements.txt tabular-service/requirements.txt
    vision-service/requirements.txt nlp-service/requirements.txt)
# Build backend of the repo's packages (see their pyproject.toml), for offline builds in the image.
BUILD_REQS=("setuptools>=68" wheel)

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" .venv/bin/python python3.11 python3; do
        if [[ -z "$candidate" ]] || ! command -v "$candidate" >/dev/null; then continue; fi
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    die "no Python 3.11 found (set PYTHON=/path/to/python3.11)"
}

for req in "${REQS[@]}"; do
    [[ -f "$req" ]] || die "$req is missing"
done

PY="$(pick_python)"
PIP_EXTRA=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && PIP_EXTRA+=(--extra-index-url "$TORCH_INDEX_URL")

BASE_IMAGE="${MODELGATE_BASE_IMAGE:-modelgate/python:3.11-bookworm}"
base_id=""
if docker_answers && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"
fi

stamp="$({
    echo "$RECIPE_REV" "${BUILD_REQS[*]}" "${TORCH_INDEX_URL:-}" "$BASE_IMAGE" "$base_id"
    "$PY" -c 'import platform, sys; print(sys.version_info[:2], platform.machine())'
    cat "${REQS[@]}"
} | sha256sum | cut -d' ' -f1)"

if [[ -f "$WHEELHOUSE/.stamp" && "$(cat "$WHEELHOUSE/.stamp")" == "$stamp" ]]; then
    log "wheelhouse is up to date ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1))"
    exit 0
fi

started=$SECONDS
tmp="$WHEELHOUSE.tmp"
rm -rf "$tmp"
mkdir -p "$tmp" "$WHEELHOUSE"
log "building the wheelhouse with $PY ($("$PY" --version)) into $WHEELHOUSE"
# The previous wheelhouse is a local source: unchanged pins are copied, not fetched or built again.
pip_wheel() {
    "$PY" -m pip wheel --wheel-dir "$tmp" --find-links "$WHEELHOUSE" --find-links "$tmp" \
        --progress-bar on "${PIP_EXTRA[@]}" "$@"
}
log "wheelhouse: build backend (${BUILD_REQS[*]})"
pip_wheel "${BUILD_REQS[@]}"
for req in "${REQS[@]}"; do
    log "wheelhouse: $req"
    pip_wheel -r "$req"
done

# Prove the images' offline installs will resolve, with the same flags as the Dockerfiles, without
# any pip configuration (the host's own find-links/indexes must not fill gaps).
offline_install_check() {
    local req=$1
    if [[ -n "$base_id" ]]; then
        docker run --rm --network none --user "$(id -u):$(id -g)" -e HOME=/tmp \
            -v "$ROOT/$tmp:/build:ro" -v "$ROOT:/src:ro" "$BASE_IMAGE" sh -c \
            'python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --dry-run --ignore-installed \
                --no-index --find-links /build --disable-pip-version-check -q -r "/src/$1"' sh "$req"
    else
        env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
            "$PY" -m pip install --dry-run --ignore-installed --quiet --no-index --find-links "$tmp" -r "$req"
    fi
}

if [[ -n "$base_id" ]]; then
    log "wheelhouse: checking offline installs with $BASE_IMAGE's own Python"
else
    warn "no Docker daemon or no $BASE_IMAGE: checking offline installs with the host's Python only"
fi
for req in "${REQS[@]}"; do
    for ((round = 1; ; round++)); do
        log "wheelhouse: offline install of $req (check $round)"
        if output="$(offline_install_check "$req" 2>&1)"; then
            break
        fi
        missing="$(sed -nE 's/^ERROR: No matching distribution found for ([^;]+).*$/\1/p' <<<"$output")"
        if [[ -z "$missing" || $round -ge 10 ]]; then
            printf '%s\n' "$output" >&2
            die "the wheelhouse cannot satisfy $req offline"
        fi
        log "wheelhouse: the image's Python also needs: $missing"
        pip_wheel "$missing"
    done
done

rm -rf "$WHEELHOUSE"
mv "$tmp" "$WHEELHOUSE"
echo "$stamp" >"$WHEELHOUSE/.stamp"
log "wheelhouse ready in $((SECONDS - started))s: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
