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
	@command -v s3fs >/dev/null && command -v rclone >/dev/null || apt-get install -y -qq s3fs rclone
	$(VENV)/bin/python bench/mount.py
	$(VENV)/bin/python bench/peers.py --latency 0,20

clean:
	rm -rf $(VENV) demo build *.egg-info
