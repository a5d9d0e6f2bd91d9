#!/bin/sh
# The build stage shared by every ModelGate image (gateway/Dockerfile, */Dockerfile). Runs INSIDE
# `docker build`, in the base image (POSIX sh: the base may be python:3.11-slim or the local
# debootstrap image; python3 is on PATH in both, at /usr/local/bin or /usr/bin).
#
#   install_service.sh deps <folder>   venv /opt/venv with <folder>/requirements.txt (which -r's core's)
#   install_service.sh app  <folder>   core and the service package (no dependencies) into /opt/app
#
# The code goes to its own folder (on the venv's sys.path through a .pth file) so that the images' big
# dependency layer (torch: ~1 GB) stays the same, cached and shared, while only the code changes.
#
# Build args arrive as environment variables:
#   WHEELHOUSE=1      offline: --no-index --find-links /build (build/wheelhouse, see build_wheelhouse.sh)
#   WHEELHOUSE=0      from the package index (PIP_INDEX_URL if set, else PyPI); torch and friends come
#                     from TORCH_INDEX_URL (CPU-only wheels) before the rest, so pip never pulls the
#                     multi-GB CUDA build from PyPI. They are installed from that index alone
#                     (not as an extra index for everything), which rules out dependency confusion.
set -eu

phase=$1
folder=$2
src=/src
venv=/opt/venv
app=/opt/app
pip="$venv/bin/python -m pip"

export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
if [ "${WHEELHOUSE:-0}" = 1 ]; then
    ls /build/*.whl >/dev/null 2>&1 || {
        echo "WHEELHOUSE=1 but build/wheelhouse is empty: run scripts/docker/build_wheelhouse.sh" >&2
        exit 1
    }
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/build
fi

case "$phase" in
deps)
    echo "--> python: $(command -v python3) ($(python3 --version)); wheelhouse: ${WHEELHOUSE:-0}"
    python3 -m venv "$venv"
    req="$src/$folder/requirements.txt"
    if [ "${WHEELHOUSE:-0}" != 1 ]; then
        torch_pins=$(grep -hE '^(torch|torchvision|torchaudio)==' "$req" || true)
        if [ -n "$torch_pins" ]; then
            echo "--> $torch_pins from $TORCH_INDEX_URL"
            # shellcheck disable=SC2086
            $pip install --index-url "$TORCH_INDEX_URL" $torch_pins
        fi
    fi
    echo "--> $req"
    $pip install -r "$req"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    echo "$app" >"$site/modelgate-app.pth"
    if [ -d "$site/torch" ]; then
        # The torch wheel carries its C++ headers, C++ test binaries and protoc (~200 MB): nothing a CPU
        # inference server uses (there is no compiler in the image anyway). torch_shm_manager stays.
        rm -rf "$site/torch/include" "$site/torch/test"
        find "$site/torch/bin" -type f ! -name torch_shm_manager -delete
    fi
    ;;
app)
    # Regular (not editable) installs of the repo's own packages: no sources needed at run time.
    $pip install --no-deps --target "$app" "$src/core" "$src/$folder"
    rm -rf /root/.cache "${app:?}/bin"
    $pip check
    ;;
*)
    echo "usage: $0 deps|app <folder>" >&2
    exit 2
    ;;
esac
