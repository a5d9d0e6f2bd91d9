# Docker targets (included from the main Makefile). The stack itself is compose.yaml.
#
#   make docker-setup      install docker/compose/debootstrap if missing, start dockerd if none answers
#   make images            build the four images from python:3.11-slim + PyPI (a normal machine)
#   make images-offline    no registry: Debian-built base images + host-built wheelhouse, then the four
#   make up / down / logs  the stack (gateway on port 8000 or $GATEWAY_PORT); SERVICE=nlp-service for one
#   make test-e2e          the compose end-to-end test (fails, never skips, when Docker is missing)
#   make docker-stop       stop the dockerd that docker-setup started (never someone else's)

# `docker compose` (v2 plugin) when there is one, else a standalone docker-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
SERVICE ?=
DOWN_ARGS ?=

# `make images-offline` records the offline image settings here; while the file exists, every compose
# command below uses them (make exports them), and so does tests/e2e. `make images` removes it.
DOCKER_OFFLINE_ENV := build/docker-offline.env
OFFLINE_BASE_IMAGE ?= modelgate/python:3.11-bookworm
OFFLINE_REDIS_IMAGE ?= modelgate/redis:7-bookworm
OFFLINE_PROMETHEUS_IMAGE ?= modelgate/prometheus:bookworm
-include $(DOCKER_OFFLINE_ENV)
ifneq ($(wildcard $(DOCKER_OFFLINE_ENV)),)
export MODELGATE_BASE_IMAGE MODELGATE_REDIS_IMAGE MODELGATE_PROMETHEUS_IMAGE MODELGATE_WHEELHOUSE
DOCKER_IMAGES_TARGET ?= images-offline
else
DOCKER_IMAGES_TARGET ?= images
endif

SERVICE_DIRS := gateway tabular-service vision-service nlp-service

.PHONY: docker-setup docker-stop base-images wheelhouse images images-offline up down logs ps test-e2e

docker-setup: ## Install Docker + Compose v2 if missing; start dockerd if none answers
	@bash scripts/docker/setup_docker.sh

docker-stop: ## Stop the dockerd that docker-setup started (not someone else's)
	@bash scripts/docker/stop_docker.sh

base-images: docker-setup ## Local base images from Debian packages (python 3.11, redis 7, prometheus)
	@bash scripts/docker/build_base_images.sh

wheelhouse: ## Wheels of every image's requirements in build/wheelhouse (for offline image builds)
	@MODELGATE_BASE_IMAGE=$(OFFLINE_BASE_IMAGE) bash scripts/docker/build_wheelhouse.sh

images: docker-setup models ## Build the four images (base python:3.11-slim, packages from PyPI)
	@rm -f $(DOCKER_OFFLINE_ENV)
	@echo "==> Building the images: $(SERVICE_DIRS)"
	@start=$$(date +%s); \
	env -u MODELGATE_BASE_IMAGE -u MODELGATE_REDIS_IMAGE -u MODELGATE_PROMETHEUS_IMAGE -u MODELGATE_WHEELHOUSE \
		$(COMPOSE) build && \
	echo "==> Images built in $$(( $$(date +%s) - start ))s" && $(SHOW_IMAGES)

images-offline: docker-setup models ## No registry: Debian-built bases + wheelhouse, then the four images
	@$(MAKE) --no-print-directory base-images wheelhouse
	@mkdir -p $(dir $(DOCKER_OFFLINE_ENV))
	@printf '%s\n' "# written by make images-offline; make images removes it" \
		"MODELGATE_BASE_IMAGE=$(OFFLINE_BASE_IMAGE)" "MODELGATE_REDIS_IMAGE=$(OFFLINE_REDIS_IMAGE)" \
		"MODELGATE_PROMETHEUS_IMAGE=$(OFFLINE_PROMETHEUS_IMAGE)" "MODELGATE_WHEELHOUSE=1" > $(DOCKER_OFFLINE_ENV)
	@echo "==> Building the images offline (base $(OFFLINE_BASE_IMAGE), build/wheelhouse): $(SERVICE_DIRS)"
	@start=$$(date +%s); \
	MODELGATE_BASE_IMAGE=$(OFFLINE_BASE_IMAGE) MODELGATE_REDIS_IMAGE=$(OFFLINE_REDIS_IMAGE) \
	MODELGATE_WHEELHOUSE=1 $(COMPOSE) build && \
	echo "==> Images built in $$(( $$(date +%s) - start ))s (settings in $(DOCKER_OFFLINE_ENV))" && \
	$(SHOW_IMAGES)

# The images and their sizes (a shell snippet: a $(MAKE) call in a recipe line runs even under make -n).
SHOW_IMAGES = docker images --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}\t{{.CreatedSince}}' | \
	grep -E '^(REPOSITORY|.*/(gateway|[a-z]+-service|python|redis|prometheus):)' || true

up: docker-setup ## Start the stack and wait until every container is healthy
	@echo "==> $(COMPOSE) up (waits for every health check: the models load first)"
	@start=$$(date +%s); \
	$(COMPOSE) up -d --wait --no-build || \
		{ echo "==> Not healthy. Images built? (make $(DOCKER_IMAGES_TARGET)) Logs: make logs"; \
		  $(COMPOSE) ps; exit 1; }; \
	echo "==> All healthy in $$(( $$(date +%s) - start ))s"; \
	$(COMPOSE) ps; \
	echo "==> Gateway: http://$$($(COMPOSE) port gateway 8000) (docs: /docs). A key:"; \
	echo "    $(COMPOSE) exec gateway python -m gateway.keys create --name me --scopes tabular,vision,nlp"

down: ## Stop and remove the stack (keys stay in the redis volume; DOWN_ARGS=-v drops it)
	@echo "==> $(COMPOSE) down $(DOWN_ARGS)"
	@$(COMPOSE) down $(DOWN_ARGS)

logs: ## Follow the stack's logs (SERVICE=nlp-service for one)
	@$(COMPOSE) logs -f --tail=100 $(SERVICE)

ps: ## The stack's containers and their health
	@$(COMPOSE) ps

test-e2e: $(DOCKER_IMAGES_TARGET) ## The compose end-to-end test (Docker required)
	@echo "==> tests/e2e against the images (make $(DOCKER_IMAGES_TARGET))"
	MODELGATE_REQUIRE_E2E=1 $(PY) -m pytest tests/e2e $(PYTEST_ARGS)
