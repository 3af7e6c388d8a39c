#!/usr/bin/env bash
# The MLflow tracking server of a `ray up` cluster (cluster.yaml), on its head node: PostgreSQL from the distribution
# holds runs, metrics and the registry (listening on the head's loopback only), scripts/mlflow-server.sh serves
# them on port 5000 to the cluster's nodes, and keeps artifacts under MRL_MLFLOW_ARTIFACTS (default
# ~/mlflow-artifacts on the head's volume; set it to an NFS/EFS mount to keep them with output_dir).
#
#   head-mlflow.sh setup   install postgresql and the driver, create the role and database (once; rerunnable)
#   head-mlflow.sh start   (re)start the server in the background (log: ~/.mrl/mlflow-server.log)
#   head-mlflow.sh uri     print the URI the cluster's nodes reach it at: http://<head private IP>:5000
#
# The database password is made once, kept in ~/.mrl/mlflow-db-password (mode 600), passed to PostgreSQL on stdin
# and to the server as PGPASSWORD: it is never on a command line. Port 5000 is reachable by the nodes of the
# cluster's security group only; MLflow itself asks no credentials, so open it to no one else (reach the UI with
# `ray attach cluster.yaml -p 5000` or an SSH tunnel).
set -euo pipefail

state="$HOME/.mrl"
password_file="$state/mlflow-db-password"
pidfile="$state/mlflow-server.pid"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

setup() {
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
  pip install -q "psycopg2-binary>=2.9"
  mkdir -p "$state" && chmod 700 "$state"
  if [ ! -s "$password_file" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$password_file")
  fi
  sudo systemctl enable --now postgresql
  sudo -u postgres psql -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN CREATE ROLE mlflow LOGIN; END IF;
END \$\$;
ALTER ROLE mlflow WITH PASSWORD '$(cat "$password_file")';
SQL
  if ! sudo -u postgres psql -tA -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1; then
    sudo -u postgres createdb -O mlflow mlflow
  fi
}

start() {
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 1; done
  fi
  PGPASSWORD=$(cat "$password_file") \
    MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow" \
    MLFLOW_ARTIFACTS_DESTINATION="${MRL_MLFLOW_ARTIFACTS:-$HOME/mlflow-artifacts}" \
    MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000 PYTHON="${PYTHON:-python}" \
    nohup bash "$here/mlflow-server.sh" > "$state/mlflow-server.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 60); do
    if curl -sf http://127.0.0.1:5000/health > /dev/null; then echo "MLflow at $(uri)"; return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || break
    sleep 2
  done
  echo "head-mlflow.sh: the MLflow server did not come up; see $state/mlflow-server.log" >&2
  tail -n 20 "$state/mlflow-server.log" >&2
  return 1
}

uri() {
  echo "http://$(hostname -I | awk '{print $1}'):5000"
}

case "${1:-}" in
  setup|start|uri) "$1" ;;
  *) echo "usage: $0 setup|start|uri" >&2; exit 2 ;;
esac
