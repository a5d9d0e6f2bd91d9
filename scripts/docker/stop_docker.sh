#!/usr/bin/env bash
# Stop the dockerd that scripts/docker/setup_docker.sh started, and only that one: a daemon somebody
# else runs (systemd, Docker Desktop, another engineer) is left alone. Containers are not removed; the
# ones with a restart policy come back when a daemon starts again (`make down` removes the stack).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker/lib.sh
source "$HERE/lib.sh"

STATE_FILE="$DOCKER_STATE_DIR/dockerd.state"

if [[ ! -f "$STATE_FILE" ]]; then
    log "no dockerd started by setup_docker.sh is recorded; leaving any running daemon alone"
    exit 0
fi

read -r pid start <"$STATE_FILE"
# Same pid AND same start time: a pid the kernel has since given to another process is not ours.
current_start=""
if [[ -r "/proc/$pid/stat" ]]; then
    current_start=$(sed -E 's/^.*\) //' "/proc/$pid/stat" | awk '{print $20}')
fi
if [[ "$current_start" != "$start" || "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]]; then
    log "the dockerd we started (pid $pid) is gone already"
    rm -f "$STATE_FILE"
    exit 0
fi

log "stopping dockerd pid $pid (SIGTERM; running containers get their stop timeout)"
as_root kill -TERM "$pid"
# dockerd's own shutdown timeout is 15s per container batch; give it a bit more.
for ((i = 0; i < 120; i++)); do
    [[ -d "/proc/$pid" ]] || break
    ((i % 10 == 9)) && log "waiting for dockerd to exit ($((i / 2 + 1))s)"
    sleep 0.5
done
if [[ -d "/proc/$pid" ]]; then
    warn "dockerd pid $pid still running after 60s; sending SIGKILL"
    as_root kill -KILL "$pid"
fi
rm -f "$STATE_FILE"
log "dockerd stopped"
