#!/usr/bin/env bash
# The MLflow tracking server of the multi-node settings: runs, metrics and the model registry in PostgreSQL,
# artifacts (models, plots) under MLFLOW_ARTIFACTS_DESTINATION, written by this server alone (clients upload and
# download through it: --serve-artifacts), so no worker writes MLflow's files on a network filesystem and the
# store takes writers from many processes and nodes. Single-node runs keep MLflow's embedded sqlite store.
#
# Used by k8s/mlflow.yaml (the `mlflow` Deployment), by scripts/head-mlflow.sh on a `ray up` head, and by
# tests/e2e/test_mlflow_postgres.py. Settings, from the environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://USER@HOST:PORT/DB (required). The driver is named: SQLAlchemy
#                                 2.1 takes a bare postgresql:// to mean psycopg 3, which is not installed. No
#                                 password in it (it would show in the process list): libpq reads PGPASSWORD (or
#                                 ~/.pgpass) instead.
#   PGPASSWORD                    the database user's password
#   MLFLOW_ARTIFACTS_DESTINATION  a directory (or s3://, gs:// URI) for artifacts (required)
#   MLFLOW_HOST, MLFLOW_PORT      where it listens (default 127.0.0.1:5000)
#   MLFLOW_WORKERS                server processes (default 2)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers it answers (mlflow's own setting; default localhost and private IPs)
#   MLFLOW_DB_WAIT_S              how long to wait for the database to accept connections (default 120)
#   PYTHON                        the interpreter with mlflow and psycopg2 (default python3)
set -euo pipefail

uri=${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI to postgresql+psycopg2://USER@HOST:PORT/DB}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION to the artifact directory or URI}
python=${PYTHON:-python3}

case "$uri" in
  postgresql+psycopg2://*) ;;
  *) echo "mlflow-server.sh: MLFLOW_BACKEND_STORE_URI must be a postgresql+psycopg2:// URI, not ${uri%%:*}://..." >&2
     exit 2 ;;
esac
userinfo=${uri#*://}
userinfo=${userinfo%%@*}
if [ "$userinfo" != "${uri#*://}" ] && [[ "$userinfo" == *:* ]]; then
  echo "mlflow-server.sh: put the password in PGPASSWORD (or ~/.pgpass), not in MLFLOW_BACKEND_STORE_URI" >&2
  exit 2
fi
case "$artifacts" in
  *://*) ;;
  *) mkdir -p "$artifacts" ;;
esac

# A database that is still starting (a pod beside it, a service after boot) is waited for, not crashed on.
MLFLOW_DB_URI="postgresql://${uri#*://}" "$python" - "${MLFLOW_DB_WAIT_S:-120}" <<'EOF'
import os, sys, time
import psycopg2
deadline = time.time() + float(sys.argv[1])
while True:
    try:
        psycopg2.connect(os.environ["MLFLOW_DB_URI"], connect_timeout=5).close()
        break
    except psycopg2.OperationalError as exc:
        if time.time() > deadline:
            sys.exit(f"mlflow-server.sh: the database does not accept connections: {exc}".strip())
        time.sleep(2)
EOF

exec "$python" -m mlflow server --backend-store-uri "$uri" --serve-artifacts --artifacts-destination "$artifacts" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
