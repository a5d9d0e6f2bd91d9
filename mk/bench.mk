# Load tests and benchmarks (included by the main Makefile). Output goes to results/ (git-ignored);
# `make bench` also refreshes the committed report, docs/benchmarks.md and docs/img/bench-*.png.

HOST ?=
LOCUST_ARGS ?=
# Without HOST the runner starts the local stack, so it needs the models; with HOST only the tools.
LOADTEST_DEPS := $(if $(HOST),$(STAMP),models)

.PHONY: loadtest loadtest-smoke bench bench-quick bench-runtime bench-workers

loadtest: $(LOADTEST_DEPS) ## Headless Locust load test (local stack, or HOST=url with MODELGATE_API_KEY); HTML report in results/
	$(PY) loadtests/run.py --profile full $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

loadtest-smoke: $(LOADTEST_DEPS) ## ~20 s Locust smoke run with 5 users, fails on any error (for CI)
	$(PY) loadtests/run.py --profile smoke $(if $(HOST),--host $(HOST)) -- $(LOCUST_ARGS)

bench: models ## Benchmark direct vs gateway (aiohttp, httpx) vs LitServe/FastAPI peers with wrk (~10 min)
	$(PY) scripts/bench.py $(BENCH_ARGS)

bench-quick: models ## The 2-minute version of make bench
	$(PY) scripts/bench.py --quick $(BENCH_ARGS)

bench-runtime: models ## torch vs ONNX Runtime per call, batching on/off under load (~10 min); results/runtime.md
	$(PY) scripts/bench_runtime.py $(BENCH_ARGS)

bench-workers: models ## Gunicorn workers x threads per service, memory, cold start (~13 min); docs/workers.md
	$(PY) scripts/bench_workers.py $(BENCH_ARGS)
