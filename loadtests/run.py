"""Run a headless Locust profile against ModelGate and write an HTML report.

    python loadtests/run.py                       # full profile (loadtests/locust.conf) on a local stack
    python loadtests/run.py --profile smoke       # ~20 s, 5 users (loadtests/smoke.conf), for CI
    python loadtests/run.py --host http://gw:8000 # an existing gateway: needs MODELGATE_API_KEY
    python loadtests/run.py -- --users 50         # anything after -- goes to locust as is

Without --host it starts the real four processes on free ports (scripts/devstack.py), makes an API key
for the run with `python -m gateway.keys create`, and stops everything afterwards. The report and CSV
stats go to results/loadtest-<profile>-<timestamp>/. The exit code is Locust's: non-zero when a
threshold is exceeded (LOADTEST_MAX_FAIL_RATIO, LOADTEST_P95_MS; see locustfile.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from devstack import running_stack  # noqa: E402

PROFILES = {"full": REPO / "loadtests" / "locust.conf", "smoke": REPO / "loadtests" / "smoke.conf"}


def run_locust(host: str, api_key: str, profile: str, out_dir: Path, extra: list[str]) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(PROFILES[profile]),
        "--locustfile",
        str(REPO / "loadtests" / "locustfile.py"),
        "--host",
        host,
        "--html",
        str(out_dir / "report.html"),
        "--csv",
        str(out_dir / "stats"),
        *extra,
    ]
    print(f"==> locust ({profile} profile) against {host}", flush=True)
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, "MODELGATE_API_KEY": api_key})
    verdict = "passed" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"==> load test {verdict}; report: {out_dir / 'report.html'}", flush=True)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--host", default=os.environ.get("HOST") or None, help="an existing gateway URL")
    parser.add_argument("--out", help="output folder (default results/loadtest-<profile>-<timestamp>)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out_dir = Path(args.out or REPO / "results" / f"loadtest-{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.host:
        key = os.environ.get("MODELGATE_API_KEY", "").strip()
        if not key:
            print("--host needs an API key in MODELGATE_API_KEY (make key NAME=loadtest)", file=sys.stderr)
            return 2
        return run_locust(args.host, key, args.profile, out_dir, extra)
    print(f"==> starting the local stack (four processes on free ports; logs in {out_dir}/stack)", flush=True)
    with running_stack(run_dir=out_dir / "stack") as stack:
        key = stack.create_key("loadtest")
        return run_locust(stack.url("gateway"), key, args.profile, out_dir, extra)


if __name__ == "__main__":
    raise SystemExit(main())
