# idcfs: `make install` sets up .venv/, `make demo` shows it working offline, `make test` tests it.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --quiet --constraint constraints.txt

.PHONY: install dev demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) -e .
	@echo "idcfs installed: $(VENV)/bin/idcfs"

dev: $(VENV)/bin/python
	$(PIP) -e '.[test]'

demo: dev
	$(VENV)/bin/python scripts/demo.py

test: dev
	$(VENV)/bin/python -m pytest -q

bench: dev
	$(VENV)/bin/python bench/mount.py

clean:
	rm -rf $(VENV) demo build *.egg-info
