"""compose.yaml as `docker stack deploy` takes it: the same file, less what only compose understands.

    python deploy/swarm/stack.py render                 # the stack file, on stdout
    python deploy/swarm/stack.py deploy [STACK]         # docker stack deploy -c - STACK (default modelgate)

Why a filter at all: `docker stack deploy` reads the compose schema 3.x, which refuses compose.yaml's
`depends_on` conditions ("services.gateway.depends_on must be a list"), which `docker compose up` needs
for its start order, a port's `host_ip` and the top-level `name`. So the file is read (YAML anchors and
merges resolved) and handed on without: `name`, the `x-*` blocks (already merged in), `build` (swarm never
builds), `depends_on` (swarm has no start order; the gateway reports a service that is not ready yet as
degraded), a bind mount's `create_host_path`, a port's `host_ip` (swarm publishes on every address),
every service with `profiles` (optional, off unless asked for) and the networks and volumes only those
use. Everything else, `${VAR:-default}` included, stays as written: `docker stack deploy` interpolates it.

`docker stack deploy` does not read `.env`: `deploy` passes it on the way compose would (the shell's
variables win over `.env`, and `build/docker-offline.env` fills in the offline image names when `make
images-offline` wrote it), plus the settings swarm needs, unless set: `SWARM_DEFAULTS` below.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
ENV_FILES = (REPO / ".env", REPO / "build" / "docker-offline.env")

# Under what the shell and .env set. DRAIN_SECONDS: a stopping task leaves swarm's DNS 2 s before its
# SIGTERM and the gateway re-resolves every 5 s, so it must keep serving that long and then some, or a
# rolling update loses requests (docs/swarm.md).
SWARM_DEFAULTS = {"DRAIN_SECONDS": "8"}

# Service keys only compose uses; swarm would refuse them or ignore them.
_COMPOSE_ONLY_SERVICE_KEYS = ("build", "depends_on")


def stack_file(compose: dict[str, Any]) -> dict[str, Any]:
    """The stack file for a loaded compose file (not changed)."""
    services: dict[str, Any] = {}
    for name, service in compose.get("services", {}).items():
        if service.get("profiles"):
            continue
        kept = {key: value for key, value in service.items() if key not in _COMPOSE_ONLY_SERVICE_KEYS}
        volumes = []
        for volume in kept.get("volumes", []):
            if isinstance(volume, dict) and isinstance(volume.get("bind"), dict):
                bind = {k: v for k, v in volume["bind"].items() if k != "create_host_path"}
                volume = (
                    {**volume, "bind": bind} if bind else {k: v for k, v in volume.items() if k != "bind"}
                )
            volumes.append(volume)
        if volumes:
            kept["volumes"] = volumes
        if "ports" in kept:
            kept["ports"] = [_swarm_port(port) for port in kept["ports"]]
        services[name] = kept
    stack = {key: value for key, value in compose.items() if key != "name" and not key.startswith("x-")}
    stack["services"] = services
    # Networks and volumes of left-out services only: swarm would make them for nothing.
    for section in ("networks", "volumes"):
        used = {_reference(item) for service in services.values() for item in service.get(section, [])}
        if section in stack:
            stack[section] = {k: v for k, v in (stack[section] or {}).items() if k in used}
    return stack


def _reference(item: Any) -> str:
    """The network or named volume a service entry refers to ("backend", "redis-data:/data", a mount)."""
    if isinstance(item, dict):
        return str(item.get("source", ""))
    return str(item).split(":", 1)[0]


def _swarm_port(port: Any) -> Any:
    # Swarm publishes on every address of the node and its schema refuses `host_ip`: bind it to one
    # address with the node's firewall instead (docs/swarm.md).
    if isinstance(port, dict):
        return {key: value for key, value in port.items() if key != "host_ip"}
    return port


def render(compose_file: Path = COMPOSE_FILE) -> str:
    compose = yaml.safe_load(compose_file.read_text())
    return str(yaml.safe_dump(stack_file(compose), sort_keys=False, width=1000))


def deploy_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """What `docker stack deploy` interpolates with: SWARM_DEFAULTS < env files < `base` (the shell's)."""
    env = dict(SWARM_DEFAULTS)
    for path in reversed(ENV_FILES):  # .env over the offline image names
        if path.is_file():
            env.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    env.update(os.environ if base is None else base)
    return env


def deploy(stack: str, env: dict[str, str] | None = None, compose_file: Path = COMPOSE_FILE) -> None:
    # --resolve-image never: the images may be local only (make images-offline); asking a registry for
    # their digests would fail, or pin a different image than the one built here.
    subprocess.run(
        ["docker", "stack", "deploy", "--prune", "--resolve-image", "never", "-c", "-", stack],
        input=render(compose_file),
        text=True,
        check=True,
        cwd=compose_file.parent,  # relative bind sources (./models) are relative to the compose file
        env=deploy_environment(env),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="print the stack file")
    deploy_parser = sub.add_parser("deploy", help="docker stack deploy it")
    deploy_parser.add_argument("stack", nargs="?", default="modelgate")
    parser.add_argument("--compose-file", type=Path, default=COMPOSE_FILE)
    args = parser.parse_args(argv)
    if args.command == "render":
        sys.stdout.write(render(args.compose_file))
    else:
        deploy(args.stack, compose_file=args.compose_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
