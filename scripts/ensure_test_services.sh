#!/usr/bin/env bash
# Make sure the real services the tests start themselves are installed (Debian's redis-server), and
# the tools they run (Debian's prometheus package, for promtool: tests/observability).
# The tests start and stop their own instances on free ports; nothing here starts a daemon.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> Installing ${missing[*]} (Debian packages) for the tests"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} missing: install (e.g. 'sudo apt-get install ${missing[*]}') and re-run" >&2
    exit 1
  fi
fi
# The packages start system instances (redis on :6379, prometheus on :9090) where an init system runs;
# the tests do not use them, and we leave them as they are.
