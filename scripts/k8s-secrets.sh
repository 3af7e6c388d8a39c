#!/usr/bin/env bash
# Makes the two Secrets the manifests in k8s/ read, with random values, so that no token or password is ever in
# the repository:
#   mrl-ray-auth     auth_token  the Ray cluster's token (raycluster.yaml, rayjob.yaml)
#   mlflow-postgres  password    the MLflow database's password (mlflow.yaml)
# A Secret that already exists is kept: PostgreSQL keeps the password it was initialised with, and running pods
# the token they started with. Values go to kubectl on stdin, never on a command line, and are never printed,
# except with --print, which writes the Secret manifests to stdout (for a sealed-secrets or GitOps step).
#
#   scripts/k8s-secrets.sh [-n NAMESPACE]     # before `kubectl apply -f k8s/`
#   scripts/k8s-secrets.sh --print
set -euo pipefail

SECRETS=("mrl-ray-auth auth_token" "mlflow-postgres password")

random_value() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

manifest() {  # NAME KEY
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  labels: {app.kubernetes.io/part-of: mrl}\n' "$1"
  printf 'type: Opaque\nstringData:\n  %s: "%s"\n' "$2" "$(random_value)"
}

if [ "${1:-}" = "--print" ]; then
  for entry in "${SECRETS[@]}"; do
    echo "---"
    manifest $entry
  done
  exit 0
fi

namespace=()
if [ "${1:-}" = "-n" ]; then
  namespace=(-n "${2:?-n needs a namespace}")
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [-n NAMESPACE] | --print" >&2
  exit 2
fi
for entry in "${SECRETS[@]}"; do
  read -r name key <<< "$entry"
  if kubectl get secret "${namespace[@]}" "$name" > /dev/null 2>&1; then
    echo "kept the existing Secret $name"
  else
    manifest "$name" "$key" | kubectl create "${namespace[@]}" -f - > /dev/null
    echo "created the Secret $name (key $key)"
  fi
done
