# Scaling out (included from the main Makefile): Kubernetes manifests (deploy/kubernetes, docs/kubernetes.md)
# and the compose file on Docker Swarm (deploy/swarm, docs/swarm.md).
#
#   make k8s-render        kubectl kustomize every overlay into build/kubernetes/<overlay>.yaml
#   make k8s-validate      render + schema check (kubernetes-validate --strict, 1.29-1.37) + our rules
#   make k8s-model-image   the image the fill-model-repository Job copies the models from
#   make swarm-up          docker stack deploy compose.yaml as STACK (this node must be a swarm manager)
#   make swarm-down        docker stack rm STACK (DOWN_ARGS=-v also drops the Redis volume: the keys)
#   make test-swarm        the swarm end-to-end test (single-node swarm; fails, never skips, without Docker)

KUBECTL ?= kubectl
K8S_OVERLAYS := dev production
K8S_OUT := build/kubernetes
STACK ?= modelgate
MODEL_IMAGE ?= $(or $(MODELGATE_IMAGE_PREFIX),modelgate)/model-repository:$(or $(MODELGATE_TAG),latest)

.PHONY: k8s-render k8s-validate k8s-model-image swarm-up swarm-down test-swarm

k8s-render: ## Render the Kubernetes overlays into build/kubernetes/ (kubectl kustomize)
	@mkdir -p $(K8S_OUT)
	@for overlay in $(K8S_OVERLAYS); do \
		$(KUBECTL) kustomize deploy/kubernetes/overlays/$$overlay > $(K8S_OUT)/$$overlay.yaml || exit 1; \
		echo "==> $(K8S_OUT)/$$overlay.yaml: $$(grep -c '^kind:' $(K8S_OUT)/$$overlay.yaml) objects"; \
	done

k8s-validate: $(STAMP) ## Kubernetes manifests, offline: render, schemas 1.29-1.37 (--strict), our rules
	$(PY) -m pytest tests/deploy -q $(PYTEST_ARGS)

k8s-model-image: ## The model repository as an image (for the Job that fills the cluster's volume)
	docker build -f deploy/kubernetes/model-repository.Dockerfile \
		--build-arg BASE_IMAGE=$(or $(MODELGATE_BASE_IMAGE),python:3.11-slim) -t $(MODEL_IMAGE) models

swarm-up: $(STAMP) ## docker stack deploy compose.yaml as STACK (needs a swarm: docker swarm init)
	@test "$$(docker info --format '{{.Swarm.ControlAvailable}}')" = true || \
		{ echo "this Docker is not a swarm manager: docker swarm init (docs/swarm.md)"; exit 1; }
	$(PY) deploy/swarm/stack.py deploy $(STACK)
	@echo "==> Tasks start in the background; watch them: docker stack ps $(STACK)"

swarm-down: ## docker stack rm STACK (DOWN_ARGS=-v also removes its Redis volume)
	docker stack rm $(STACK)
	@if [ "$(DOWN_ARGS)" = "-v" ]; then \
		echo "==> waiting for the tasks to go, then removing $(STACK)_redis-data"; \
		while [ -n "$$(docker ps -aq --filter label=com.docker.stack.namespace=$(STACK))" ]; do sleep 1; done; \
		docker volume rm $(STACK)_redis-data; \
	fi

test-swarm: $(DOCKER_IMAGES_TARGET) ## The swarm end-to-end test (Docker required)
	MODELGATE_REQUIRE_E2E=1 $(PY) -m pytest tests/e2e/test_swarm.py $(PYTEST_ARGS)
