#!/bin/sh
# Creates the Python venv with pyca/cryptography that the krun-luks oracle tests use.
# Usage: luks/tests/oracle/setup-venv.sh [VENV_DIR]   (default /opt/krun-luks-venv)
# Then: export KRUN_LUKS_PYTHON=VENV_DIR/bin/python
set -eu
venv=${1:-/opt/krun-luks-venv}
if ! "$venv/bin/python" -c 'import cryptography' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'cryptography>=42'
fi
"$venv/bin/python" -c 'import cryptography; print("cryptography", cryptography.__version__)'
