#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine (Debian + Python 3.10+), idempotently:
# the Fashion-MNIST and WordNet Debian packages (the real data), the CPU build of PyTorch, then the project
# with its test extras.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)

PACKAGES=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || PACKAGES+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || PACKAGES+=(wordnet-base)
# `ray up` with the on-premise cluster-local.yaml: SSH (server and client) and rsync (tests/distributed/test_ray_up.py)
[ -x /usr/sbin/sshd ] || PACKAGES+=(openssh-server)
command -v ssh >/dev/null || PACKAGES+=(openssh-client)
command -v rsync >/dev/null || PACKAGES+=(rsync)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}"
fi
# The CPU build first: otherwise pip resolves `torch` to a multi-GB CUDA build.
"$PYTHON" -m pip install -q --disable-pip-version-check torch==2.13.0
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[test,tune]"
