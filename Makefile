# From a fresh clone: `make test` runs the tests, `make generate` writes sample text. Both first create .venv and
# install the requirements; a stamp file per requirements file makes that happen only once, or after it changes.
# On a machine without a GPU, take torch's smaller CPU build with
#   make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test generate fetch test-min test-latest

test: $(VENV)/test.stamp
	$(PY) -m pytest -q tests

generate: $(VENV)/requirements.stamp
	$(PY) run_llama.py --option generate

fetch: $(VENV)/requirements.stamp
	$(PY) assets.py

# The lower bounds in requirements*.txt, checked: a second venv with exactly those versions runs the tests.
test-min:
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install $$(grep -hE '^[a-z-]+>=' requirements.txt requirements-test.txt | sed 's/>=/==/')
	.venv-min/bin/python -m pytest -q tests

# What a new user gets: a third venv with the newest release of every requirement that pip resolves to.
test-latest:
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -U -r requirements-test.txt
	.venv-latest/bin/python -m pytest -q tests

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/requirements.stamp: requirements.txt | $(PY)
ifneq ($(TORCH_INDEX),)
	$(PY) -m pip install $(TORCH_INDEX) "$$(grep -E '^torch\b' requirements.txt)"
endif
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/test.stamp: requirements-test.txt $(VENV)/requirements.stamp
	$(PY) -m pip install -r requirements-test.txt
	touch $@
