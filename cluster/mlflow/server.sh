#!/usr/bin/env bash
# The team's MLflow tracking server: runs, params and metrics in Postgres, artifacts
# (scaling plots, configs) in S3, served through this server so Ray workers need no
# S3 rights on the artifact bucket. See cluster/README.md, "MLflow server".
#
# Settings, all from the environment:
#   PGHOST, PGPORT (5432), PGUSER, PGDATABASE (mlflow)   the Postgres database
#   PGPASSWORD                                            read by libpq itself, so the
#                                                         password never appears in `ps`
#   MLFLOW_ARTIFACTS_DESTINATION   s3://YOUR-BUCKET/clipscale/mlflow-artifacts
#   MLFLOW_ALLOWED_HOSTS           the Host names clients use (e.g. mlflow.internal:5000,
#                                  mlflow.mlflow.svc.cluster.local:5000); MLflow answers only
#                                  localhost and private IPs without it
#   MLFLOW_PORT (5000), MLFLOW_WORKERS (4)
# S3 access comes from the machine's instance profile / pod identity, or the standard
# AWS_* variables. Needs `pip install psycopg2-binary` beside mlflow.
set -euo pipefail

: "${PGHOST:?set PGHOST to the Postgres host (e.g. the RDS endpoint)}"
: "${PGUSER:?set PGUSER to the Postgres user MLflow owns its tables as}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://YOUR-BUCKET/clipscale/mlflow-artifacts}"
PGPORT="${PGPORT:-5432}"
PGDATABASE="${PGDATABASE:-mlflow}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-4}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then MLFLOW="$ROOT/.venv/bin/mlflow"; else MLFLOW="mlflow"; fi

extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

# No password in the URI: psycopg2 (libpq) takes it from PGPASSWORD.
exec "$MLFLOW" server \
    --backend-store-uri "postgresql://${PGUSER}@${PGHOST}:${PGPORT}/${PGDATABASE}" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host 0.0.0.0 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    "${extra[@]}"
