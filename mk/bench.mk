# Load tests and benchmarks (included by the main Makefile). Output goes to results/ (git-ignored);
# `make bench` also refreshes the committed reports, docs/benchmarks.md, docs/benchmarks-oip.md and
# docs/img/bench-*.png. BENCH_ARGS go to the target's own script; in `make bench` they go to bench.py and
# BENCH_OIP_ARGS to bench_oip.py (the two take different options).

HOST ?=
LOCUST_ARGS ?=
BENCH_OIP_ARGS ?=
# Without HOST the runner starts the local stack, so it needs the models; with HOST only the tools.
LOADTEST_DEPS := $(if $(HOST),$(STAMP),models)

.PHONY: loadtest loadtest-smoke bench bench-quick bench-oip bench-runtime bench-workers

loadtest: $(LOADTEST_DEPS) ## Headless Locust load test (local stack, or HOST=url with MODELGATE_API_KEY); HTML report in results/
	$(PY) loadtests/run.py --profile full $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

loadtest-smoke: $(LOADTEST_DEPS) ## ~20 s Locust smoke run with 5 users, fails on any error (for CI)
	$(PY) loadtests/run.py --profile smoke $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

bench: models ## Benchmark direct vs gateway (aiohttp, httpx) vs LitServe/FastAPI peers, then vs MLServer, with wrk (~15 min)
	$(PY) scripts/bench.py $(BENCH_ARGS)
	$(PY) scripts/bench_oip.py $(BENCH_OIP_ARGS)

bench-quick: models ## The 2-minute version of make bench
	$(PY) scripts/bench.py --quick $(BENCH_ARGS)

bench-oip: models ## /v2 infer on iris: ModelGate (gateway JSON/binary, direct) vs MLServer 1.7.1 with wrk (~5 min; --quick ~1.5)
	$(PY) scripts/bench_oip.py $(BENCH_ARGS)

bench-runtime: models ## torch vs ONNX Runtime per call, batching on/off under load (~10 min); results/runtime.md
	$(PY) scripts/bench_runtime.py $(BENCH_ARGS)

bench-workers: models ## Gunicorn workers x threads per service, memory, cold start (~13 min); docs/workers.md
	$(PY) scripts/bench_workers.py $(BENCH_ARGS)
