# The Python interpreter that setup.sh installs into and that test.sh and quickstart.sh run with.
# setup.sh, test.sh and quickstart.sh source this file; `bash scripts/python.sh` prints the choice.
# Nothing here creates or installs anything.
#
# The rule, first match wins:
#   1. PYTHON=...        set explicitly: used as given (a command on PATH or a path)
#   2. VIRTUAL_ENV=...   an activated virtual environment (`. <venv>/bin/activate` sets it): its bin/python
#   3. CONDA_PREFIX=...  an activated conda environment: its bin/python
#   4. otherwise         the project venv: bin/python of $MRL_VENV, by default .venv in this checkout
#                        (setup.sh creates it on first use)
# Only activation counts, i.e. the variables it sets. `python3` on PATH is taken to be the system's, which on
# Debian 12 and Ubuntu 24.04 refuses `pip install` (PEP 668), even where it happens to belong to a venv.

_MRL_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

project_venv() {
  echo "${MRL_VENV:-$_MRL_REPO/.venv}"
}

choose_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ]; then
    echo "$VIRTUAL_ENV/bin/python"
  elif [ -n "${CONDA_PREFIX:-}" ]; then
    echo "$CONDA_PREFIX/bin/python"
  else
    echo "$(project_venv)/bin/python"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  choose_python
fi
