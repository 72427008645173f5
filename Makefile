# Every target builds .venv from this project's own files first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/lstm.yaml
# SER_ACCEPT_LICENCES=1 make train: download missing corpora without asking (their
# licences are printed first); without it train.py asks at a terminal.
export SER_ACCEPT_LICENCES

.PHONY: venv train quick test clean-cache

# What training and serving need; the test tools come on top (about 20 s more to install).
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

train: $(VENV)/.installed-run   ## set up, fetch missing corpora (asks first), train on the default config (CONFIG=... to change)
	$(PY) train.py --config $(CONFIG)

quick: $(VENV)/.installed-run   ## set up, then a tiny training run (< 3 min)
	$(PY) train.py --config configs/quick.yaml

test: venv             ## set up, then run the tests
	$(PY) -m pytest -q

clean-cache:           ## delete cached features (they are recomputed on demand)
	rm -rf data/cache
