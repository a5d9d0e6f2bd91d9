# shellcheck shell=bash
# Helpers shared by scripts/docker/*.sh. Source it; it does nothing on its own.

# Everything we cache or record lives outside the repo, per user.
MODELGATE_CACHE_DIR="${MODELGATE_CACHE_DIR:-$HOME/.cache/modelgate}"
# shellcheck disable=SC2034  # used by the scripts that source this file
DOCKER_STATE_DIR="$MODELGATE_CACHE_DIR/docker"

log() { printf '\033[1m==> [%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '\033[33m!!  %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

docker_answers() { docker info >/dev/null 2>&1; }

# The Debian archive this machine installs from (its main archive, not -security), read from the apt
# sources at run time so that no mirror host is written into the repo. MODELGATE_DEBIAN_MIRROR wins.
debian_mirror() {
    if [[ -n "${MODELGATE_DEBIAN_MIRROR:-}" ]]; then
        echo "$MODELGATE_DEBIAN_MIRROR"
        return
    fi
    local uri
    # deb822 files (*.sources): one stanza per blank-line-separated block.
    uri=$(awk '
        BEGIN { RS = ""; FS = "\n" }
        {
            uris = ""; suites = ""; types = ""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                if ($i ~ /^Types:/)  { types = $i }
            }
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites != "" && suites !~ /-security/) {
                split(uris, u, /[ \t]+/); print u[1]; exit
            }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [[ -z "$uri" ]]; then
        # One-line format: deb [options] URI suite components...
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -E 's/\[[^]]*\]//' |
            awk '$1 == "deb" && $3 !~ /-security/ { print $2; exit }' || true)
    fi
    [[ -n "$uri" ]] || die "no Debian mirror found in /etc/apt/sources*; set MODELGATE_DEBIAN_MIRROR"
    echo "${uri%/}"
}
