# idcfs: `make install` sets up .venv/, `make demo` shows it working offline, `make test` tests it.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --quiet --constraint constraints.txt

.PHONY: system install install-system dev demo test bench clean

# FUSE 3, its headers, a C compiler, the Python headers: installed as root with apt, else named.
system:
	@sh scripts/system-deps.sh $(PYTHON)

$(VENV)/bin/python: | system
	$(PYTHON) -m venv $(VENV)

install: system $(VENV)/bin/python
	$(PIP) -e .
	@echo "idcfs installed: $(VENV)/bin/idcfs"

# As root: `idcfs` on the PATH, the mount(8) helper (fstab, mount -t fuse.idcfs), the systemd units.
install-system: install
	ln -sf $(CURDIR)/$(VENV)/bin/idcfs /usr/local/bin/idcfs
	ln -sf $(CURDIR)/$(VENV)/bin/mount.fuse.idcfs /sbin/mount.fuse.idcfs
	install -m 0644 systemd/idcfs@.service /etc/systemd/system/idcfs@.service
	install -d /etc/systemd/user /etc/idcfs
	install -m 0644 systemd/user/idcfs@.service /etc/systemd/user/idcfs@.service
	@systemctl daemon-reload 2>/dev/null || echo "systemd is not running here; run 'systemctl daemon-reload' where it is"
	@echo "installed: /usr/local/bin/idcfs, /sbin/mount.fuse.idcfs, idcfs@.service (system and user)"

dev: system $(VENV)/bin/python
	$(PIP) -e '.[test]'

demo: dev
	$(VENV)/bin/python scripts/demo.py

test: dev
	$(VENV)/bin/python -m pytest -q

# The peers and the benchmark's HTTPS endpoint (nginx) are Debian packages.
bench: dev
	@command -v s3fs >/dev/null && command -v rclone >/dev/null && command -v nginx >/dev/null \
		|| apt-get install -y -qq s3fs rclone nginx-light >/dev/null
	$(VENV)/bin/python -m compileall -q idcfs  # as an installed idcfs is, with PYTHONDONTWRITEBYTECODE set
	$(VENV)/bin/python bench/mount.py
	$(VENV)/bin/python bench/peers.py

clean:
	rm -rf $(VENV) demo build *.egg-info
