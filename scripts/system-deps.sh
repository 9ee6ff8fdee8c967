#!/bin/sh
# What idcfs needs from the system before pip can build it: FUSE 3 (the fusermount3 helper and the
# library's headers, found through pkg-config), a C compiler and the Python headers (pyfuse3 has no
# wheel and is compiled at install), Python 3.11+ with venv. As root with apt-get, whatever is
# missing is installed; otherwise one line gives the exact command and the exit status is 1.
#
#     scripts/system-deps.sh [PYTHON]
set -u
python=${1:-python3}
missing=""
unfixable=""

need() { # need PACKAGE: a Debian package to install
    case " $missing " in *" $1 "*) ;; *) missing="${missing:+$missing }$1" ;; esac
}

if ! command -v "$python" >/dev/null 2>&1; then
    echo "idcfs: $python not found: install Python 3.11 or newer (Debian: apt-get install python3 python3-venv python3-dev)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "idcfs: $python is Python $("$python" -c 'import platform; print(platform.python_version())'), idcfs needs 3.11 or newer: run make PYTHON=python3.11 (or newer)" >&2
    exit 1
fi

command -v fusermount3 >/dev/null 2>&1 || need fuse3
if command -v pkg-config >/dev/null 2>&1; then
    pkg-config --exists fuse3 2>/dev/null || need libfuse3-dev
else
    need pkg-config
    need libfuse3-dev
fi
command -v "${CC:-cc}" >/dev/null 2>&1 || need gcc

# Debian's own Pythons keep their headers and venv in packages of their own (python3.11-dev,
# python3.11-venv); any other Python (pyenv, a build from source) has them or cannot get them.
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
real=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
headers=$("$python" -c 'import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))')
if [ "$headers" != True ]; then
    case "$real" in
        /usr/bin/python*) need "python$version-dev" ;;
        *) unfixable="$real has no Python headers (Python.h): rebuild or reinstall that Python with its development files, or run make PYTHON=/usr/bin/python3" ;;
    esac
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    case "$real" in
        /usr/bin/python*) need "python$version-venv" ;;
        *) unfixable="$real cannot make virtual environments (no ensurepip): reinstall it with venv, or run make PYTHON=/usr/bin/python3" ;;
    esac
fi

if [ -n "$unfixable" ]; then
    echo "idcfs: $unfixable" >&2
    exit 1
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "idcfs: installing the system packages it needs: $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update once if the first try fails.
    # shellcheck disable=SC2086 # the package names are words
    if ! apt-get install -y -qq $missing >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1
        if ! apt-get install -y -qq $missing >/dev/null; then
            echo "idcfs: apt-get could not install $missing; run: apt-get update && apt-get install $missing" >&2
            exit 1
        fi
    fi
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    echo "idcfs: missing system packages; install them with: sudo apt-get install $missing" >&2
else
    echo "idcfs: missing system packages (Debian names: $missing); install FUSE 3 with its development files, pkg-config and a C compiler with your package manager" >&2
fi
exit 1
