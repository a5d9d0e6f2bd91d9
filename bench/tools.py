"""The tools the benchmarks need, outside ModelGate's own requirements: Debian's `wrk` (the load
generator), LitServe (a peer in `make bench`) and MLServer 1.7.1 in its own virtual environment (the
peer in `make bench-oip`).

`make bench-tools` (a prerequisite of every bench target) runs `python -m bench.tools install`; a
benchmark only checks (`require_*`) and names that target when something is missing, so a measurement
never installs anything while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "make bench-tools"
LITSERVE_PIN = "litserve==0.2.19"
MLSERVER_VENV = REPO / "build" / "mlserver-venv"
# uvloop newer than 0.21.0 stops MLServer 1.7.1's inference worker process from starting.
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
# Pinned to this interpreter's versions: the joblib pickle must load into the same classes on both sides.
MODEL_LIBRARIES = ("scikit-learn", "joblib", "numpy")


class MissingTool(SystemExit):
    """A tool is not installed: the message names the make target that installs it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: run `{INSTALL_HINT}` first")


def mlserver_pins() -> list[str]:
    return [*MLSERVER_PINS, *(f"{name}=={metadata.version(name)}" for name in MODEL_LIBRARIES)]


# ----------------------------------------------------------------------------------------------------
# Checks (what a benchmark calls)


def require_wrk() -> tuple[str, str]:
    """Path and version of wrk."""
    path = shutil.which("wrk")
    if path is None:
        raise MissingTool("wrk is missing")
    version = subprocess.run([path, "-v"], capture_output=True, text=True).stdout.splitlines()
    found = version[0].split(" Copyright")[0] if version else "wrk"
    print(f"==> load generator: {path} ({found})", flush=True)
    return path, found


def litserve_version() -> tuple[bool, str]:
    """Whether litserve imports in this interpreter, and its version or why it cannot be used."""
    found = subprocess.run(
        [sys.executable, "-c", "import litserve; print(litserve.__version__)"], capture_output=True, text=True
    )
    if found.returncode != 0:
        return False, f"litserve is not installed (`{INSTALL_HINT}` installs {LITSERVE_PIN})"
    return True, found.stdout.strip()


def require_mlserver(venv: Path = MLSERVER_VENV) -> dict[str, str]:
    """The versions in MLServer's venv; MissingTool when it is absent or made for other pins."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not (python.exists() and stamp.is_file()):
        raise MissingTool(f"MLServer's venv {venv.relative_to(REPO)} is missing")
    if stamp.read_text() != "\n".join(mlserver_pins()):
        raise MissingTool(f"MLServer's venv {venv.relative_to(REPO)} was made for other versions")
    probe = (
        "import json, mlserver_sklearn; from importlib import metadata; "
        "print(json.dumps({n: metadata.version(n) for n in ('mlserver', 'mlserver-sklearn', 'uvloop', "
        "'scikit-learn', 'numpy', 'joblib', 'fastapi', 'uvicorn')}))"
    )
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if found.returncode != 0:
        tail = found.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"MLServer's venv {venv} is broken ({tail[0]}); delete it and run `{INSTALL_HINT}`")
    versions: dict[str, str] = json.loads(found.stdout)
    print(f"==> MLServer venv: {', '.join(f'{k} {v}' for k, v in versions.items())}", flush=True)
    return versions


def require_py_spy() -> str | None:
    """py-spy's path (it is in requirements-dev.txt), or None."""
    path = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return path if Path(path).exists() else None


# ----------------------------------------------------------------------------------------------------
# Installing (what `make bench-tools` runs)


def install_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("wrk is missing: install it (sudo apt-get install -y wrk) and run again")
    print("==> installing Debian's wrk (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)


def install_litserve() -> None:
    """LitServe into .venv. It is one peer among others: a failed install is reported, not fatal (the
    benchmark then says why that peer was not measured)."""
    if litserve_version()[0]:
        return
    print(f"==> pip install {LITSERVE_PIN}", flush=True)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", LITSERVE_PIN], capture_output=True, text=True
    )
    if installed.returncode != 0:
        tail = (installed.stderr or installed.stdout).strip().splitlines()[-3:]
        print(f"    `pip install {LITSERVE_PIN}` failed: {' / '.join(tail)}", flush=True)


def install_mlserver(venv: Path = MLSERVER_VENV) -> None:
    """MLServer's own venv (it never touches .venv), remade when the pins change."""
    pins = mlserver_pins()
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.is_file() and stamp.read_text() == "\n".join(pins):
        return
    print(
        f"==> installing MLServer into {venv.relative_to(REPO)} (its own venv): {' '.join(pins)}", flush=True
    )
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--progress-bar", "on", *pins], check=True)
    stamp.write_text("\n".join(pins))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("install", "check"))
    args = parser.parse_args(argv)
    if args.action == "install":
        install_wrk()
        install_litserve()
        install_mlserver()
    require_wrk()
    print(f"==> litserve: {litserve_version()[1]}", flush=True)
    require_mlserver()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
