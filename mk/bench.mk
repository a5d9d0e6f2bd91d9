# Load tests and benchmarks (included by the main Makefile). The benchmarks are the `bench` package at the
# repository root (`python -m bench.<name>`, see bench/__init__.py); output goes to results/ (git-ignored).
# A full `make bench` also refreshes the committed reports, docs/benchmarks.md, docs/benchmarks-oip.md and
# docs/img/bench-*.png; a --quick run leaves docs/ alone. BENCH_ARGS go to the target's own module; in
# `make bench` they go to bench.gateway and BENCH_OIP_ARGS to bench.oip (the two take different options).
# The tools the benchmarks need come from `make bench-tools`; a benchmark only checks for them.

HOST ?=
LOCUST_ARGS ?=
BENCH_OIP_ARGS ?=
# Without HOST the runner starts the local stack, so it needs the models; with HOST only the tools.
LOADTEST_DEPS := $(if $(HOST),$(STAMP),models)

.PHONY: loadtest loadtest-smoke bench bench-quick bench-oip bench-runtime bench-workers bench-tools first-run

loadtest: $(LOADTEST_DEPS) ## Headless Locust load test (local stack, or HOST=url with MODELGATE_API_KEY); HTML report in results/
	$(PY) loadtests/run.py --profile full $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

loadtest-smoke: $(LOADTEST_DEPS) ## ~20 s Locust smoke run with 5 users, fails on any error (for CI)
	$(PY) loadtests/run.py --profile smoke $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

bench-tools: $(STAMP) ## What the benchmarks need: wrk (apt-get), litserve (pip), MLServer 1.7.1's own venv (build/mlserver-venv)
	$(PY) -m bench.tools install

bench: models bench-tools ## Gateway cost (now vs --baseline rev), direct vs gateway vs LitServe/FastAPI peers, then vs MLServer, with wrk (~20 min)
	$(PY) -m bench.gateway $(BENCH_ARGS)
	$(PY) -m bench.oip $(BENCH_OIP_ARGS)

bench-quick: models bench-tools ## The ~4-minute version of make bench's first half (results/ only)
	$(PY) -m bench.gateway --quick $(BENCH_ARGS)

bench-oip: models bench-tools ## /v2 infer on iris: ModelGate (gateway JSON/binary, direct) vs MLServer 1.7.1 with wrk (~8 min; --quick ~2)
	$(PY) -m bench.oip $(BENCH_ARGS)

bench-runtime: models bench-tools ## torch vs ONNX Runtime, batching on/off, served vs in-process limit (~12 min); results/runtime-*/
	$(PY) -m bench.runtime $(BENCH_ARGS)

bench-workers: models bench-tools ## Gunicorn workers x threads per service, memory, cold start (~13 min); docs/workers.md
	$(PY) -m bench.workers $(BENCH_ARGS)

first-run: $(STAMP) ## Time a first `make run` from a fresh clone with empty caches, step by step (~6 min); docs/first-run.md
	$(PY) -m bench.first_run $(BENCH_ARGS)
