#!/usr/bin/env bash
# Installs what ./quickstart.sh needs, or with --test what ./test.sh needs, on a fresh Debian 12 / Ubuntu 24.04
# machine (run as root or with sudo). Idempotent: a second run installs nothing.
#
#   Debian packages  dataset-fashion-mnist and wordnet-base (the real data); with --test also openssh-server,
#                    openssh-client and rsync (tests/distributed/test_ray_up.py runs a private sshd) and
#                    postgresql (tests/e2e/test_mlflow_postgres.py runs a private cluster), installed without
#                    letting their services start, and chromium and chromium-driver (the search page's browser
#                    test, tests/e2e/test_search_page.py)
#   Python           the interpreter scripts/python.sh chooses: PYTHON=, an activated venv or conda env, else
#                    the project venv .venv, created here on first use (with the apt package python3-venv when
#                    python3 cannot make venvs); into it the CPU build of PyTorch, then the project with its test
#                    and tune extras. A stamp in the venv records pyproject.toml's hash after a successful
#                    install, so the next run skips pip while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/python.sh

case "${1:-}" in
  "") TEST=false ;;
  --test) TEST=true ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)

# apt's and pip's own output (a few lines per package, and whatever the machine's pip configuration warns about)
# goes to log files; a failure prints the end of its log.
LOG_DIR=outputs/logs
APT_LOG="$LOG_DIR/setup-apt.log"
PIP_LOG="$LOG_DIR/setup-pip.log"
logged() {  # logged LOG command...: run the command with its output appended to LOG
  local log=$1
  shift
  mkdir -p "$LOG_DIR"
  if ! "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup.sh: '$*' failed; its whole output is in $log" >&2
    exit 1
  fi
}
apt_run() { logged "$APT_LOG" "$@"; }
APT_UPDATED=false
apt_update() {
  $APT_UPDATED || apt_run $SUDO apt-get update -qq
  APT_UPDATED=true
}
apt_install() {
  apt_update
  echo "setup.sh: installing the Debian packages $* (apt's output: $APT_LOG)"
  apt_run $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# apt-get install while the packages' maintainer scripts may not start services: openssh-server's would enable
# and start sshd on 0.0.0.0:22. invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d first, and its exit
# status 101 means "not allowed". An existing policy-rc.d is the machine's own policy and stays as it is.
apt_install_without_services() {
  local policy=/usr/sbin/policy-rc.d
  if [ -e "$policy" ]; then
    apt_install "$@"
  else
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\n# temporary, from mrl-platform setup.sh: no service starts during its apt-get install\nexit 101\n' \
      | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    apt_install "$@"
    $SUDO rm -f "$policy"
    trap - EXIT
  fi
}

# --- Debian packages ---------------------------------------------------------------------------------------------
PACKAGES=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || PACKAGES+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || PACKAGES+=(wordnet-base)
[ ${#PACKAGES[@]} -eq 0 ] || apt_install "${PACKAGES[@]}"

if $TEST; then
  SSH_PACKAGES=()
  NEW_SSHD=false
  [ -x /usr/sbin/sshd ] || { SSH_PACKAGES+=(openssh-server); NEW_SSHD=true; }
  command -v ssh >/dev/null || SSH_PACKAGES+=(openssh-client)
  command -v rsync >/dev/null || SSH_PACKAGES+=(rsync)
  if [ ${#SSH_PACKAGES[@]} -gt 0 ]; then
    apt_install_without_services "${SSH_PACKAGES[@]}"
    # Under systemd the package still enables ssh.service (and on Ubuntu ssh.socket) for the next boot.
    if $NEW_SSHD && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $SUDO systemctl disable --now ssh.service ssh.socket \
        || echo "setup.sh: could not disable ssh.service/ssh.socket; check with: systemctl status ssh" >&2
    fi
  fi
  # tests/e2e/test_mlflow_postgres.py runs a throwaway PostgreSQL cluster of its own (initdb in a temp dir): the
  # package's own cluster and service are not wanted, so its service is kept from starting like sshd's.
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    apt_install_without_services postgresql
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
      $SUDO systemctl disable --now postgresql.service \
        || echo "setup.sh: could not disable postgresql.service; check with: systemctl status postgresql" >&2
    fi
  fi
  # tests/e2e/test_search_page.py drives this chromium through this chromedriver with Selenium, which downloads
  # nothing. Debian ships both as packages (no service to keep from starting); Ubuntu only as snap wrappers, which do
  # not run in containers: there, say so and go on (that one test then fails naming what it needs).
  BROWSER_PACKAGES=()
  [ -x /usr/bin/chromium ] || BROWSER_PACKAGES+=(chromium)
  [ -x /usr/bin/chromedriver ] || BROWSER_PACKAGES+=(chromium-driver)
  if [ ${#BROWSER_PACKAGES[@]} -gt 0 ]; then
    apt_update
    MISSING=()
    for package in "${BROWSER_PACKAGES[@]}"; do
      apt-cache show "$package" >/dev/null 2>&1 || MISSING+=("$package")
    done
    if [ ${#MISSING[@]} -eq 0 ]; then
      apt_install "${BROWSER_PACKAGES[@]}"
    else
      echo "setup.sh: no package ${MISSING[*]} here (Debian's chromium and chromium-driver); without" \
           "/usr/bin/chromium and /usr/bin/chromedriver tests/e2e/test_search_page.py fails" >&2
    fi
  fi
fi

# --- Python ------------------------------------------------------------------------------------------------------
PYTHON=$(choose_python)
VENV=$(project_venv)

if [ "$PYTHON" = "$VENV/bin/python" ] && ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  # A venv without pip is what an interrupted or failed `python3 -m venv` leaves behind: start again.
  [ ! -f "$VENV/pyvenv.cfg" ] || rm -rf "$VENV"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian and Ubuntu ship ensurepip in the package python3.X-venv (python3-venv: the default python3's).
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt_update
    if apt-cache show "python$version-venv" >/dev/null 2>&1; then
      apt_install "python$version-venv"
    else
      apt_install python3-venv
    fi
  fi
  echo "setup.sh: creating the project venv $VENV with $(command -v python3)"
  python3 -m venv "$VENV"
  logged "$PIP_LOG" "$PYTHON" -m pip install -q --disable-pip-version-check "pip>=21.3"  # editable installs from pyproject.toml
fi

PIP_TORCH=(torch==2.13.0)
PIP_PROJECT=(-e ".[test,tune]")
# The stamp lives in the environment it describes, and only in virtual environments (never in a system prefix).
STAMP=$("$PYTHON" -c 'import sys; print(sys.prefix + "/.mrl-setup-stamp" if sys.prefix != sys.base_prefix else "")')
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $PWD ${PIP_TORCH[*]} ${PIP_PROJECT[*]}"
if [ -n "$STAMP" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  exit 0
fi
echo "setup.sh: pip install of the CPU build of PyTorch and the project into $("$PYTHON" -c 'import sys; print(sys.prefix)') (pip's output: $PIP_LOG)"
# The CPU build first: otherwise pip resolves `torch` to a multi-GB CUDA build.
logged "$PIP_LOG" "$PYTHON" -m pip install -q --disable-pip-version-check "${PIP_TORCH[@]}"
logged "$PIP_LOG" "$PYTHON" -m pip install -q --disable-pip-version-check "${PIP_PROJECT[@]}"
[ -z "$STAMP" ] || echo "$WANT" > "$STAMP"
