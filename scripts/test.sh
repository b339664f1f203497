#!/usr/bin/env bash
# Set up and run the test suite (unit + integration against a real broker and a real Redis).
#   scripts/test.sh [pytest options]
# The fixtures use RECSTREAM_TEST_KAFKA / RECSTREAM_TEST_REDIS if set, testcontainers if a Docker
# engine answers, else they start local processes (Kafka from Maven jars or Tansu; redis-server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh dev
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
