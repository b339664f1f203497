#!/usr/bin/env bash
# Set up and run the whole service on this machine: local broker, Redis, worker, API, demo traffic.
#   scripts/up.sh [recstream up options]     (default: --demo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh embedded
if [ "$#" -eq 0 ]; then set -- --demo; fi
exec .venv/bin/recstream up "$@"
