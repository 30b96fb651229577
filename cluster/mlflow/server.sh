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
#   MLFLOW_AUTH_DATABASE (mlflow_auth)  the Postgres database of users and permissions
#                                  (same host and user; create it beside PGDATABASE)
#
# Closed by default: MLflow's basic-auth app, so every request needs a user and password.
# Two secrets, from your secret store (SSM / Secrets Manager / a Kubernetes secret) into
# the environment, never into a file here:
#   MLFLOW_FLASK_SERVER_SECRET_KEY   signs the UI's CSRF tokens (required, every start)
#   MLFLOW_AUTH_ADMIN_PASSWORD       the admin's password, read only at the first start,
#                                    when MLflow creates the admin user (12+ characters)
# Then create the ladder's non-admin user once: cluster/mlflow/ensure_user.py.
# S3 access comes from the machine's instance profile / pod identity, or the standard
# AWS_* variables. Needs `pip install psycopg2-binary 'mlflow[auth]'` beside mlflow.
set -euo pipefail

: "${PGHOST:?set PGHOST to the Postgres host (e.g. the RDS endpoint)}"
: "${PGUSER:?set PGUSER to the Postgres user MLflow owns its tables as}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://YOUR-BUCKET/clipscale/mlflow-artifacts}"
PGPORT="${PGPORT:-5432}"
PGDATABASE="${PGDATABASE:-mlflow}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-4}"
MLFLOW_AUTH_DATABASE="${MLFLOW_AUTH_DATABASE:-mlflow_auth}"
if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY-}" ]]; then
    echo "server.sh: set MLFLOW_FLASK_SERVER_SECRET_KEY from your secret store (the auth app signs its CSRF tokens with it)" >&2
    exit 1
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then MLFLOW="$ROOT/.venv/bin/mlflow"; else MLFLOW="mlflow"; fi

extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
    extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

# The auth app's settings; no secret in them (the admin password comes from
# MLFLOW_AUTH_ADMIN_PASSWORD at first start, the database password from PGPASSWORD).
auth_config="$(umask 077 && mktemp "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX.ini")"
cat >"$auth_config" <<EOF
[mlflow]
default_permission = READ
database_uri = postgresql://${PGUSER}@${PGHOST}:${PGPORT}/${MLFLOW_AUTH_DATABASE}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Password checks are a deliberately slow hash: cache a good one for a minute per worker.
auth_cache_ttl_seconds = 60
EOF
export MLFLOW_AUTH_CONFIG_PATH="$auth_config"

# No password in the URI: psycopg2 (libpq) takes it from PGPASSWORD.
exec "$MLFLOW" server --app-name basic-auth \
    --backend-store-uri "postgresql://${PGUSER}@${PGHOST}:${PGPORT}/${PGDATABASE}" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host 0.0.0.0 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    "${extra[@]}"
