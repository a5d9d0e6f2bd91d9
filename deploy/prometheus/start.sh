#!/bin/sh
# The Prometheus container's entrypoint: render prometheus.yml (next to this script) into
# $PROMETHEUS_RUNTIME_DIR with the PROMETHEUS_* overrides from the environment, then exec the command
# (`prometheus --config.file=$PROMETHEUS_RUNTIME_DIR/prometheus.yml ...`). POSIX sh and sed only: it runs
# in the busybox-based prom/prometheus image and in the Debian one (scripts/docker/build_base_images.sh).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${PROMETHEUS_RUNTIME_DIR:-/tmp/prometheus}
mkdir -p "$out"
script=""
for name in SCRAPE_INTERVAL EVALUATION_INTERVAL SD_REFRESH_INTERVAL GATEWAY_METRICS_PORT; do
    value=$(eval "printf %s \"\${PROMETHEUS_$name:-}\"")
    [ -n "$value" ] || continue
    # Durations (1s, 500ms, 2m) and ports only: the value goes into a sed script and a YAML file.
    case "$value" in
        *[!0-9smhdwy]*) echo "PROMETHEUS_$name=$value: expected a duration (15s) or a port" >&2; exit 2 ;;
    esac
    script="$script s|^\\( *[a-z_]*: \\)[0-9a-z]*\\( *# PROMETHEUS_$name\\)\$|\\1$value\\2|;"
done
sed -e "$script" "$here/prometheus.yml" >"$out/prometheus.yml"
# rule_files are relative to the rendered file: point its rules/ at ours.
ln -sfn "$here/rules" "$out/rules"
exec "$@"
