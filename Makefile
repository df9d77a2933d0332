# Two commands a newcomer needs:  `make bench`  (main job)  and  `make test`  (whole test suite).
# Both create or refresh the local virtual environment .venv and fetch the offline assets.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

assets: $(STAMP)
	$(VENV)/bin/cnncompress data fetch

bench: assets
	$(VENV)/bin/cnncompress bench

test: assets
	$(VENV)/bin/python -m pytest

.PHONY: venv assets bench test
