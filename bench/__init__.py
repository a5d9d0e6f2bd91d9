"""ModelGate's benchmarks: `python -m bench.<name>` (or the `make bench*` targets in mk/bench.mk).

- `bench.harness`: the processes, their CPU and memory, the requests, and wrk (one Lua script).
- `bench.tools`: the tools the benchmarks need (`make bench-tools` installs them; a benchmark only checks).
- `bench.report`: Markdown tables, plots, and copying a full run's report to docs/.
- One module per benchmark: `gateway` (`make bench`), `oip` (`make bench-oip`), `workers`
  (`make bench-workers`), `runtime` (`make bench-runtime`), `first_run` (`make first-run`).
"""
