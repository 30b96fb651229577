#!/usr/bin/env bash
# A one-machine "cluster": a Ray head and an MLflow tracking server on sqlite (dashboard
# and MLflow bound to 127.0.0.1), so `ray job submit` and the MLflow UI work exactly as they do
# against a real cluster.
#
# Closed by default: Ray runs with token auth (RAY_AUTH_MODE=token) and MLflow with its
# basic-auth app. The secrets are made at first start, as files of mode 600 in
# $STATE_DIR/secrets (kept out of git and of `ray job submit` uploads): ray_auth_token,
# mlflow_admin_password (the admin's, set when the auth database is created),
# mlflow_password (the ladder's non-admin user, MLFLOW_USER) and mlflow_flask_key. The Ray
# head gets the token's path and the ladder user's credentials in its environment, so jobs
# and their workers log to MLflow as that user; nothing secret travels in a runtime env.
#
#   cluster/local.sh [start]   start both (no-op for whichever is already running)
#   cluster/local.sh status    say what is running
#   cluster/local.sh stop      stop both
#
# Each service runs in its own session (setsid) with its pid in $STATE_DIR, and `stop`
# signals only those process groups: `ray stop` would kill every Ray on the machine,
# including other users' and test suites' instances.
#
# Settings (environment): RAY_NUM_CPUS (default: all cores), RAY_NUM_GPUS (default:
# detected), RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), MLFLOW_PORT (5000),
# MLFLOW_DB (<repo>/mlflow.db, the file `make run` and `make ui` use, so earlier local
# ladders show up in the server), CLIPSCALE_LOCAL_DIR (<repo>/runs/local-cluster: pid
# files, logs, artifacts, secrets), RAY_TEMP_DIR (Ray's default, /tmp/ray), RAY_START_ARGS (more
# `ray start` flags, e.g. other ports when another Ray already runs here), MLFLOW_USER
# (clipscale, the ladder's MLflow user).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${CLIPSCALE_LOCAL_DIR:-$ROOT/runs/local-cluster}"
RAY_PORT="${RAY_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_DB="${MLFLOW_DB:-$ROOT/mlflow.db}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-}"
STARTUP_TIMEOUT_S="${STARTUP_TIMEOUT_S:-240}"
SECRETS_DIR="$STATE_DIR/secrets"
MLFLOW_USER="${MLFLOW_USER:-clipscale}"
MLFLOW_ADMIN_USER=admin

die() { echo "cluster/local.sh: $*" >&2; exit 1; }

# The repo's venv first: its ray/mlflow are the versions clipscale pins.
tool() {
    if [[ -x "$ROOT/.venv/bin/$1" ]]; then
        echo "$ROOT/.venv/bin/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        die "cannot find '$1': run 'make install' (creates .venv) or put it on PATH"
    fi
}

secret() {  # secret NAME: path of a random secret, made at first use (mode 600, never printed)
    local path="$SECRETS_DIR/$1"
    if [[ ! -s "$path" ]]; then
        (umask 077 && mkdir -p "$SECRETS_DIR" &&
         "$(tool python)" -c 'import secrets; print(secrets.token_hex(32))' >"$path.new" &&
         mv "$path.new" "$path")
    fi
    chmod 700 "$SECRETS_DIR"
    chmod 600 "$path"
    echo "$path"
}

alive() {  # alive NAME: the recorded process is still running
    local pidfile="$STATE_DIR/$1.pid"
    [[ -f "$pidfile" ]] && [[ -n "$(live_in_group "$(cat "$pidfile")")" ]]
}

live_in_group() {  # live_in_group PGID: pids of its processes that are not zombies
    ps -e -o pgid=,pid=,stat= | awk -v g="$1" '$1 == g && $3 !~ /^Z/ { print $2 }'
}

wait_http() {  # wait_http URL NAME LOG: poll until the URL answers, or fail showing the log
    local url="$1" name="$2" log="$3" py deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    py="$(tool python)"
    # Any HTTP answer counts, 401 included: both services ask for credentials.
    until "$py" -c "
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass" "$url" 2>/dev/null; do
        if ! alive "$name"; then
            tail -n 30 "$log" >&2 || true
            die "$name exited during start-up (log: $log)"
        fi
        if (( SECONDS > deadline )); then
            tail -n 30 "$log" >&2 || true
            die "$name did not answer at $url within ${STARTUP_TIMEOUT_S}s (log: $log)"
        fi
        sleep 1
    done
}

ray_address_file() { echo "${RAY_TEMP_DIR:-${RAY_TMPDIR:-/tmp}/ray}/ray_current_cluster"; }

start_ray() {
    if alive ray; then
        echo "ray: already running (pid $(cat "$STATE_DIR/ray.pid"))"
        return
    fi
    local args=(start --head --block --port "$RAY_PORT"
                --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT"
                --num-cpus "$RAY_NUM_CPUS" --disable-usage-stats)
    [[ -n "${RAY_NUM_GPUS:-}" ]] && args+=(--num-gpus "$RAY_NUM_GPUS")
    [[ -n "$RAY_TEMP_DIR" ]] && args+=(--temp-dir "$RAY_TEMP_DIR")
    # e.g. RAY_START_ARGS="--ray-client-server-port 10011" beside another Ray on this machine
    # shellcheck disable=SC2206
    [[ -n "${RAY_START_ARGS:-}" ]] && args+=($RAY_START_ARGS)
    # A submitted job runs in the raylet's environment, not the submitting shell's: the
    # tracking URI, the ladder user's MLflow credentials and the venv's python must be set
    # here for `ray job submit` jobs. The token file's path, not the token, is in the env.
    local path="$PATH" token password
    [[ -d "$ROOT/.venv/bin" ]] && path="$ROOT/.venv/bin:$PATH"
    token="$(secret ray_auth_token)"
    password="$(secret mlflow_password)"
    # --block keeps `ray start` in the foreground as the parent of GCS, raylet and the
    # dashboard: stopping it (its process group) stops exactly this Ray.
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token" \
    MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" MLFLOW_TRACKING_USERNAME="$MLFLOW_USER" \
    MLFLOW_TRACKING_PASSWORD="$(cat "$password")" PATH="$path" \
        setsid "$(tool ray)" "${args[@]}" >"$STATE_DIR/ray.log" 2>&1 < /dev/null &
    echo $! >"$STATE_DIR/ray.pid"
    wait_http "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" ray "$STATE_DIR/ray.log"
    # What `ray start` recorded for `ray.init()` to find: the GCS address drivers join.
    local record
    record="$(ray_address_file)"
    if [[ -f "$record" ]]; then cp "$record" "$STATE_DIR/ray.address"; else echo "$(hostname -I 2>/dev/null | cut -d' ' -f1):$RAY_PORT" >"$STATE_DIR/ray.address"; fi
    echo "ray: head at $(cat "$STATE_DIR/ray.address"), dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT (pid $(cat "$STATE_DIR/ray.pid"))"
}

start_mlflow() {
    if alive mlflow; then
        echo "mlflow: already running (pid $(cat "$STATE_DIR/mlflow.pid"))"
        return
    fi
    mkdir -p "$STATE_DIR/mlartifacts"
    local admin flask_key
    admin="$(secret mlflow_admin_password)"
    flask_key="$(secret mlflow_flask_key)"
    write_auth_config "$STATE_DIR/mlflow-auth.ini"
    # The auth database holds the users' password hashes: readable by this user only.
    (umask 077 && touch "$STATE_DIR/mlflow-auth.db")
    chmod 600 "$STATE_DIR/mlflow-auth.db"
    # Proxied artifacts (--artifacts-destination): clients upload through the server,
    # the same arrangement as the production server with its S3 root. MLflow reads the
    # admin password only when it creates the auth database (first start).
    MLFLOW_AUTH_CONFIG_PATH="$STATE_DIR/mlflow-auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$admin")" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$flask_key")" \
        setsid "$(tool mlflow)" server --app-name basic-auth \
        --backend-store-uri "sqlite:///$MLFLOW_DB" \
        --artifacts-destination "$STATE_DIR/mlartifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        >"$STATE_DIR/mlflow.log" 2>&1 < /dev/null &
    echo $! >"$STATE_DIR/mlflow.pid"
    wait_http "http://127.0.0.1:$MLFLOW_PORT/health" mlflow "$STATE_DIR/mlflow.log"
    echo "mlflow: http://127.0.0.1:$MLFLOW_PORT on sqlite:///$MLFLOW_DB, basic auth (pid $(cat "$STATE_DIR/mlflow.pid"))"
    # The ladder's own non-admin user; EDIT on experiments made before auth (e.g. by `make run`).
    MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" MLFLOW_TRACKING_USERNAME="$MLFLOW_ADMIN_USER" \
    MLFLOW_TRACKING_PASSWORD="$(cat "$admin")" \
        "$(tool python)" "$ROOT/cluster/mlflow/ensure_user.py" --user "$MLFLOW_USER" \
        --password-file "$(secret mlflow_password)" --grant-existing EDIT ||
        die "could not set up MLflow user '$MLFLOW_USER' as '$MLFLOW_ADMIN_USER'; if $SECRETS_DIR was" \
            "recreated after $STATE_DIR/mlflow-auth.db, delete that database (its users) and start again"
}

write_auth_config() {  # write_auth_config PATH: MLflow's basic-auth settings; no secret in it
    cat >"$1" <<EOF
[mlflow]
# Authenticated users may read every experiment; writing needs a grant (or being its creator).
default_permission = READ
database_uri = sqlite:///$STATE_DIR/mlflow-auth.db
admin_username = $MLFLOW_ADMIN_USER
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Each password check is a deliberately slow hash; a ladder logs thousands of requests.
auth_cache_ttl_seconds = 60
EOF
}

wait_group_gone() {  # wait_group_gone PGID SECONDS
    local _
    for _ in $(seq "$2"); do
        [[ -z "$(live_in_group "$1")" ]] && return 0
        sleep 1
    done
    return 0
}

stop_one() {  # stop_one NAME: TERM its process group (Ray: its leader first), KILL what is left
    local pidfile="$STATE_DIR/$1.pid" pid
    if [[ ! -f "$pidfile" ]]; then
        echo "$1: not running"
        return
    fi
    pid="$(cat "$pidfile")"
    if [[ -n "$(live_in_group "$pid")" ]]; then
        if [[ "$1" == ray ]]; then
            # The leader first: `ray start --block` drains the node through GCS and then
            # stops its children, which stalls for 30 s if GCS got the signal too.
            kill -TERM "$pid" 2>/dev/null || true
            wait_group_gone "$pid" 45
        fi
        # setsid made the service its own group leader, so -pid is its group (and only its).
        if [[ -n "$(live_in_group "$pid")" ]]; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            wait_group_gone "$pid" 10
        fi
        if [[ -n "$(live_in_group "$pid")" ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
        echo "$1: stopped (process group $pid)"
    else
        echo "$1: not running (stale pid file)"
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_one mlflow
    stop_one ray
    # `ray start` records its address for `ray.init()` to find; a stale record would make
    # the next local `ray.init()` try to join this stopped cluster. Remove only ours.
    local record our
    record="$(ray_address_file)"
    if [[ -f "$STATE_DIR/ray.address" ]]; then
        our="$(cat "$STATE_DIR/ray.address")"
        if [[ -f "$record" && "$(cat "$record")" == "$our" ]]; then
            rm -f "$record"
        fi
        rm -f "$STATE_DIR/ray.address"
    fi
}

print_usage_lines() {
    # Printed as commands that read the secret files: the secrets themselves are never printed.
    local read_password='$(cat '"$SECRETS_DIR"'/mlflow_password)'
    cat <<EOF

# In your shell: drivers (ray.init, 'make run') join RAY_ADDRESS; 'ray job submit/status/logs'
# talk to the dashboard at RAY_API_SERVER_ADDRESS. Both services require credentials:
# Ray the token in RAY_AUTH_TOKEN_PATH, MLflow user '$MLFLOW_USER' and its password.
export RAY_ADDRESS=$(cat "$STATE_DIR/ray.address")
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$SECRETS_DIR/ray_auth_token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export MLFLOW_TRACKING_USERNAME=$MLFLOW_USER MLFLOW_TRACKING_PASSWORD="$read_password"

# Run a ladder as a Ray job (from the repository root; .rayignore keeps data and venvs out of the upload):
$(tool ray) job submit --working-dir . -- python experiments/ladder.py --config experiments/configs/tiny.yaml

# Watch: Ray dashboard http://127.0.0.1:$RAY_DASHBOARD_PORT (it asks for the token in $SECRETS_DIR/ray_auth_token),
# MLflow UI http://127.0.0.1:$MLFLOW_PORT (user $MLFLOW_USER, password in $SECRETS_DIR/mlflow_password;
# the admin '$MLFLOW_ADMIN_USER' manages users, password in $SECRETS_DIR/mlflow_admin_password)
# Stop both: cluster/local.sh stop
EOF
}

case "${1:-start}" in
    start)
        mkdir -p "$STATE_DIR"
        # MLflow first: the ladder's user must exist before Ray accepts a job that logs as it.
        start_mlflow
        start_ray
        print_usage_lines
        ;;
    stop)
        stop_all
        ;;
    status)
        for name in ray mlflow; do
            if alive "$name"; then echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"; else echo "$name: not running"; fi
        done
        ;;
    *)
        die "usage: cluster/local.sh [start|status|stop]"
        ;;
esac
