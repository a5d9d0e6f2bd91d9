#!/usr/bin/env bash
# Make sure the real services the tests start themselves are installed (Debian's redis-server).
# The tests start and stop their own instances on free ports; nothing here starts a daemon.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> Installing redis-server (Debian package) for the tests"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null
  else
    echo "redis-server is missing: install it (e.g. 'sudo apt-get install redis-server') and re-run" >&2
    exit 1
  fi
fi
# The package starts a system instance on :6379; the tests do not use it, and we leave it as it is.
