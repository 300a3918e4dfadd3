#!/usr/bin/env bash
# The whole test suite, after the set-up it needs (README: "Set-up and the two commands").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest -q "$@"
