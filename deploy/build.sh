#!/bin/sh
# The project's install, one script for `make setup` (and so CI) and the container image
# (deploy/docker/Dockerfile):
#
#   deploy/build.sh PYTHON VENV PIP-INSTALL-ARGUMENTS...
#
# makes VENV with PYTHON unless it exists, upgrades pip in it, and installs with
# `pip install -q -c constraints.txt PIP-INSTALL-ARGUMENTS` (constraints.txt, beside
# pyproject.toml, pins every package to the tested version), which builds the fast
# path's C extension (streams/gate/_native.c, setup.py) where a C compiler is found. The
# extension is optional (without it the gate decides every post in Python);
# ENFORCER_REQUIRE_NATIVE=1 makes its absence an error (the image sets it).
set -eu
python=${1:?usage: deploy/build.sh PYTHON VENV PIP-INSTALL-ARGUMENTS...}
venv=${2:?usage: deploy/build.sh PYTHON VENV PIP-INSTALL-ARGUMENTS...}
shift 2
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$(dirname "$0")/../constraints.txt" "$@"
if [ "${ENFORCER_REQUIRE_NATIVE:-0}" = 1 ]; then
    (cd / && "$venv/bin/python" -c 'import streams.gate._native as m; print("fast path:", m.__file__)')
fi
