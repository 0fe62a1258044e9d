# From a fresh clone: `make test` runs the tests, `make generate` writes sample text. Both first create .venv and
# install the requirements; a stamp file per requirements file makes that happen only once, or after it changes.
#
# torch: TORCH (default torch==2.13.0, the version CI tests), from TORCH_INDEX. On Linux without nvidia-smi,
# TORCH_INDEX is PyTorch's CPU wheel index (the CPU build, a 190 MB wheel instead of several GB of CUDA ones); when
# that index cannot be reached, one line says so and torch comes from pip's default index. On macOS, Windows and
# Linux with nvidia-smi, TORCH_INDEX is empty: pip's default build. pip keeps a torch that is already installed, so
# to change builds start over:  make clean-venv && make test TORCH_INDEX=   (empty: the default, CUDA on Linux)

PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(and $(filter Linux,$(shell uname -s)),$(if $(shell command -v nvidia-smi),,no-gpu)),$(TORCH_CPU_INDEX))
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test generate fetch test-min test-latest clean-venv

test: $(VENV)/test.stamp
	$(PY) -m pytest -q tests

generate: $(VENV)/requirements.stamp
	$(PY) run_llama.py --option generate

fetch: $(VENV)/requirements.stamp
	$(PY) assets.py

clean-venv:
	rm -rf $(VENV) .venv-min .venv-latest

# $(call install_torch,PYTHON,REQUIREMENT): with TORCH_INDEX set, install REQUIREMENT from it into a venv if it answers
# (pip's default index then adds no other torch), else say that torch will come from pip's default index.
REACHABLE := import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=30)
define install_torch
	$(if $(TORCH_INDEX),@echo "make: torch's build from $(TORCH_INDEX)"; \
	if $(1) -c "$(REACHABLE)" "$(TORCH_INDEX)/torch/" 2>/dev/null; then \
		$(1) -m pip install --index-url "$(TORCH_INDEX)" "$(2)"; \
	else echo "make: $(TORCH_INDEX) cannot be reached: torch comes from pip's default index instead"; fi)
endef

# The lower bounds in requirements*.txt, checked: a second venv with exactly those versions runs the tests.
test-min:
	$(PYTHON) -m venv .venv-min
	$(call install_torch,.venv-min/bin/python,$$(grep -E '^torch>=' requirements.txt | sed 's/>=/==/'))
	.venv-min/bin/python -m pip install $$(grep -hE '^[a-z-]+>=' requirements.txt requirements-test.txt | sed 's/>=/==/')
	.venv-min/bin/python -m pytest -q tests

# What a new user gets: a third venv with the newest release of every requirement that pip resolves to.
test-latest:
	$(PYTHON) -m venv .venv-latest
	$(call install_torch,.venv-latest/bin/python,torch)
	.venv-latest/bin/python -m pip install -U -r requirements-test.txt
	.venv-latest/bin/python -m pytest -q tests

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/requirements.stamp: requirements.txt | $(PY)
	$(call install_torch,$(PY),$(TORCH))
	$(PY) -m pip install "$(TORCH)" -r requirements.txt
	touch $@

$(VENV)/test.stamp: requirements-test.txt $(VENV)/requirements.stamp
	$(PY) -m pip install -r requirements-test.txt
	touch $@
