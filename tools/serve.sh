#!/usr/bin/env bash
# Run the node on its embedded default: shipped demo weights, SQLite state and spool under ./var.
set -euo pipefail
LIVER_NODE_APT_PACKAGES="python3-venv libgl1 libglib2.0-0" source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/liver-node serve --config conf/node.toml "$@"
