#!/usr/bin/env bash
# The ShopRec production profile as a native local stack on loopback:
#   Airflow 3 api-server, scheduler, dag-processor, triggerer, two Celery workers (queues "default" and
#   "gpu"), the MLflow tracking server (one worker) and the Feast feature server, on the PostgreSQL and
#   Redis this machine already runs.
#
#   scripts/stack.sh start     create databases/secrets if missing, start everything, wait until healthy
#   scripts/stack.sh stop      stop the whole process group (TERM, then KILL after a bounded wait)
#   scripts/stack.sh status    pids and health of every service
#   scripts/stack.sh env       print the generated environment (source it to use the stack's CLI)
#   scripts/stack.sh purge     stop, drop the stack's databases, flush its Redis indexes, remove state
#
# Configuration (environment; committed defaults in conf/airflow-production.env.example, local overrides
# in conf/local/airflow-production.env, never committed):
#   SHOPREC_HOME              state root (default ./.shoprec); the stack keeps its state in $SHOPREC_HOME/stack
#   SHOPREC_STACK_GPU_HOME    SHOPREC_HOME of the "gpu" worker (default $SHOPREC_HOME/stack/gpu-worker): another
#                             folder than the other services', as on its own machine (no lake, no Feast files)
#   SHOPREC_ARTIFACT_STORE_URL the artifact store every service shares (default file://$SHOPREC_HOME/artifacts):
#                             the only files the gpu worker and the others exchange (tasks.artifacts)
#   SHOPREC_STACK_NAME        database name prefix (default shoprec): <name>, <name>_airflow, _mlflow, _feast, _ledger;
#                             the ledger's tables belong to role <name>_ledger_owner and the services connect to
#                             <name>_ledger as <name>_ledger_app, which may only read, append and commit/release
#   SHOPREC_STACK_PG          PostgreSQL server URL without database (default postgresql+psycopg2://postgres@127.0.0.1:5432)
#   SHOPREC_STACK_REDIS       Redis server URL without index (default redis://127.0.0.1:6379)
#   SHOPREC_STACK_REDIS_DB    Redis index of the Feast online store (default 0); the Celery broker uses the next one
#   SHOPREC_STACK_BIND        address every server binds (default 127.0.0.1)
#   SHOPREC_STACK_API_PORT / _MLFLOW_PORT / _FEAST_PORT / _WORKER_LOG_PORT / _TRIGGER_LOG_PORT
#   SHOPREC_STACK_DAGS        DAG folder (default ./dags)
#   SHOPREC_STACK_PARALLELISM AIRFLOW__CORE__PARALLELISM (default 8)
#   SHOPREC_STACK_DAGS_PAUSED new DAGs start paused (default True, as in Airflow): unpause them in the UI/API
#   SHOPREC_STACK_GPU_SLOTS   slots of the Airflow pool "gpu" the training task runs in (default 1)
#   SHOPREC_STACK_TIMEOUT     seconds to wait for health (default 300); SHOPREC_STACK_STOP_TIMEOUT (default 30)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${SHOPREC_PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
HELPER=("$PYTHON" "$ROOT/scripts/stack_helper.py")

# Layered configuration: committed defaults, then local overrides; the caller's environment wins.
load_conf() {
    local file
    for file in "$ROOT/conf/airflow-production.env.example" "$ROOT/conf/local/airflow-production.env"; do
        [[ -f "$file" ]] || continue
        while IFS='=' read -r key value; do
            [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
            [[ -n "${!key:-}" ]] || export "$key=$value"
        done < "$file"
    done
}
load_conf

HOME_DIR="$(realpath -m "${SHOPREC_HOME:-$ROOT/.shoprec}")"
STATE="$HOME_DIR/stack"
GPU_HOME="$(realpath -m "${SHOPREC_STACK_GPU_HOME:-$STATE/gpu-worker}")"
ARTIFACT_STORE="${SHOPREC_ARTIFACT_STORE_URL:-file://$HOME_DIR/artifacts}"
NAME="${SHOPREC_STACK_NAME:-shoprec}"
PG="${SHOPREC_STACK_PG:-postgresql+psycopg2://postgres@127.0.0.1:5432}"
PG="${PG%/}"
REDIS="${SHOPREC_STACK_REDIS:-redis://127.0.0.1:6379}"
REDIS="${REDIS%/}"
REDIS_DB="${SHOPREC_STACK_REDIS_DB:-0}"
BROKER_DB="$((REDIS_DB + 1))"
BIND="${SHOPREC_STACK_BIND:-127.0.0.1}"
API_PORT="${SHOPREC_STACK_API_PORT:-8080}"
MLFLOW_PORT="${SHOPREC_STACK_MLFLOW_PORT:-5000}"
FEAST_PORT="${SHOPREC_STACK_FEAST_PORT:-6566}"
WORKER_LOG_PORT="${SHOPREC_STACK_WORKER_LOG_PORT:-8793}"
TRIGGER_LOG_PORT="${SHOPREC_STACK_TRIGGER_LOG_PORT:-8794}"
DAGS="$(realpath -m "${SHOPREC_STACK_DAGS:-$ROOT/dags}")"
PARALLELISM="${SHOPREC_STACK_PARALLELISM:-8}"
TIMEOUT="${SHOPREC_STACK_TIMEOUT:-300}"
STOP_TIMEOUT="${SHOPREC_STACK_STOP_TIMEOUT:-30}"
ADMIN_USER="${SHOPREC_STACK_ADMIN_USER:-admin}"
GPU_SLOTS="${SHOPREC_STACK_GPU_SLOTS:-1}"
PAUSED_AT_CREATION="${SHOPREC_STACK_DAGS_PAUSED:-True}"
SERVICES=(api-server scheduler dag-processor triggerer worker-default worker-gpu mlflow feast)

log() { printf '[stack %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The generated environment every service (and `source <(scripts/stack.sh env)`) uses.
write_env() {
    local secrets="$STATE/secrets" pg_url="$PG/$NAME" ledger_url
    # the services reach the ledger as its app role (append-only; tasks.privacy.pg_guard)
    if [[ "$PG" == *@* ]]; then ledger_url="${PG%%://*}://${NAME}_ledger_app@${PG#*@}/${NAME}_ledger"
    else ledger_url="${PG%%://*}://${NAME}_ledger_app@${PG#*://}/${NAME}_ledger"; fi
    umask 077
    cat > "$STATE/stack.env.tmp" <<EOF
# Generated by scripts/stack.sh; holds secrets (mode 0600). Regenerated on every start.
export AIRFLOW_HOME='$STATE/airflow'
export AIRFLOW__CORE__EXECUTOR='CeleryExecutor'
export AIRFLOW__CORE__DAGS_FOLDER='$DAGS'
export AIRFLOW__CORE__LOAD_EXAMPLES='False'
export AIRFLOW__CORE__PARALLELISM='$PARALLELISM'
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION='$PAUSED_AT_CREATION'
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT='120'
export AIRFLOW__CORE__FERNET_KEY='$(cat "$secrets/fernet_key")'
export AIRFLOW__CORE__AUTH_MANAGER='airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager'
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS='$ADMIN_USER:admin'
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE='$secrets/simple_auth_manager_passwords.json'
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL='http://$BIND:$API_PORT/execution/'
export AIRFLOW__CORE__HOSTNAME_CALLABLE='stack_hostname.worker_hostname'
export AIRFLOW__CORE__ASSET_MANAGER_CLASS='tasks.scheduling.KeepQueuedEventsAssetManager'
export AIRFLOW__API__HOST='$BIND'
export AIRFLOW__API__PORT='$API_PORT'
export AIRFLOW__API__BASE_URL='http://$BIND:$API_PORT'
export AIRFLOW__API__SECRET_KEY='$(cat "$secrets/api_secret_key")'
export AIRFLOW__API_AUTH__JWT_SECRET='$(cat "$secrets/jwt_secret")'
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='${pg_url}_airflow'
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC='${pg_url/+psycopg2/+psycopg_async}_airflow'
export AIRFLOW__CELERY__BROKER_URL='$REDIS/$BROKER_DB'
export AIRFLOW__CELERY__RESULT_BACKEND='db+${pg_url/+psycopg2/}_airflow'
export AIRFLOW__CELERY__WORKER_CONCURRENCY='2'
export AIRFLOW__OPERATORS__DEFAULT_QUEUE='default'
export AIRFLOW__LOGGING__BASE_LOG_FOLDER='$STATE/airflow/logs'
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT='$WORKER_LOG_PORT'
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT='$TRIGGER_LOG_PORT'
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK='False'
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL='30'
export PYTHONPATH='$ROOT:$ROOT/scripts'
export SHOPREC_PROFILE='production'
export SHOPREC_HOME='$HOME_DIR'
export SHOPREC_STACK_GPU_HOME='$GPU_HOME'
export SHOPREC_ARTIFACT_STORE_URL='$ARTIFACT_STORE'
export SHOPREC_PROJECT_ROOT='$ROOT'
export SHOPREC_POSTGRES_URL='$pg_url'
export SHOPREC_LEDGER_URL='$ledger_url'
export SHOPREC_LEDGER_KEY='$(cat "$secrets/ledger_key")'
export SHOPREC_FEAST_REGISTRY_URL='${pg_url}_feast'
export SHOPREC_REDIS_URL='$REDIS/$REDIS_DB'
export SHOPREC_MLFLOW_SERVER_URL='http://$BIND:$MLFLOW_PORT'
export SHOPREC_PSEUDONYM_KEY='$(cat "$secrets/pseudonym_key")'
export SHOPREC_STACK_API_URL='http://$BIND:$API_PORT'
export SHOPREC_STACK_FEAST_URL='http://$BIND:$FEAST_PORT'
export SHOPREC_STACK_ADMIN_USER='$ADMIN_USER'
export SHOPREC_STACK_ADMIN_PASSWORD_FILE='$secrets/admin_password'
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
EOF
    mv "$STATE/stack.env.tmp" "$STATE/stack.env"
}

# The Feast feature server reads the same repo config the pipeline builds from Settings
# (tasks.feast_store: SQL registry on PostgreSQL, Redis online store); prints the repo folder.
write_feature_store_yaml() {
    (
        # shellcheck disable=SC1091
        source "$STATE/stack.env"
        "$PYTHON" -c 'from tasks.config import get_settings
from tasks.feast_store import write_repo_yaml
print(write_repo_yaml(get_settings()))'
    ) > "$STATE/feast_repo" || die "could not write the Feast repo config"
}

# Runs inside the new session/process group: start every service, record pids, wait for them.
supervise() {
    # shellcheck disable=SC1091
    source "$STATE/stack.env"
    ps -o pgid= $$ | tr -d ' ' > "$STATE/pgid"
    local airflow="$BIN/airflow" logs="$STATE/logs"
    start_one() {
        local name="$1"; shift
        "$@" >> "$logs/$name.log" 2>&1 < /dev/null &
        echo $! > "$STATE/pids/$name"
    }
    start_one api-server "$airflow" api-server --host "$BIND" --port "$API_PORT" --workers 1
    start_one scheduler "$airflow" scheduler
    start_one dag-processor "$airflow" dag-processor
    # Airflow's log servers bind every interface (not configurable); on one host the api-server reads
    # the task logs from the shared log folder, so the triggerer and both workers skip serving them.
    # (A second worker on one host needs --skip-serve-logs anyway: the port would clash.)
    start_one triggerer "$airflow" triggerer --skip-serve-logs
    start_one worker-default env SHOPREC_WORKER_NAME=default \
        "$airflow" celery worker --queues default --celery-hostname "default@%h" --concurrency 2 \
        --skip-serve-logs
    # the gpu worker has its own SHOPREC_HOME (as on its own machine): it reads the run's pinned data
    # from the shared artifact store, the ledger and MLflow from their servers, never the lake or Feast
    start_one worker-gpu env SHOPREC_WORKER_NAME=gpu SHOPREC_HOME="$SHOPREC_STACK_GPU_HOME" \
        "$airflow" celery worker --queues gpu --celery-hostname "gpu@%h" --concurrency 1 --skip-serve-logs
    start_one mlflow "$BIN/mlflow" server \
        --backend-store-uri "$PG/${NAME}_mlflow" \
        --artifacts-destination "$HOME_DIR/mlflow/artifacts" \
        --host "$BIND" --port "$MLFLOW_PORT" --workers 1
    start_one feast "$BIN/feast" -c "$(cat "$STATE/feast_repo")" serve --host "$BIND" --port "$FEAST_PORT" --workers 1
    wait
}

pgid() { [[ -s "$STATE/pgid" ]] && cat "$STATE/pgid"; }
group_alive() { local g; g="$(pgid)" && [[ -n "$g" ]] && kill -0 -- "-$g" 2>/dev/null; }

start() {
    group_alive && die "already running (process group $(pgid)); run: $0 stop"
    "${HELPER[@]}" create-dbs "$PG" "$NAME" || die "could not create the databases on $PG"
    "${HELPER[@]}" prepare-ledger "$PG" "$NAME" || die "could not set up the append-only ledger on $PG"
    [[ "$GPU_HOME" != "$HOME_DIR" ]] || die "SHOPREC_STACK_GPU_HOME must differ from SHOPREC_HOME ($HOME_DIR)"
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/airflow" "$HOME_DIR/mlflow/artifacts" "$GPU_HOME"
    rm -f "$STATE/pids/"* "$STATE/pgid"
    "${HELPER[@]}" write-secrets "$STATE/secrets" "$ADMIN_USER"
    write_env
    write_feature_store_yaml
    (
        # shellcheck disable=SC1091
        source "$STATE/stack.env"
        log "migrating the Airflow metadata database"
        timeout "$TIMEOUT" "$BIN/airflow" db migrate >> "$STATE/logs/migrate.log" 2>&1
        # train_recommender's training task runs in pool "gpu": one slot per GPU worker process.
        timeout "$TIMEOUT" "$BIN/airflow" pools set gpu "$GPU_SLOTS" "GPU training slots (queue gpu)" \
            >> "$STATE/logs/migrate.log" 2>&1
    ) || die "airflow db migrate or pool setup failed; see $STATE/logs/migrate.log"
    # A new session and process group holds every service, so that stop can end them all together.
    setsid bash "$0" _supervise > "$STATE/logs/supervisor.log" 2>&1 < /dev/null &
    local waited=0
    until [[ -s "$STATE/pgid" ]]; do
        sleep 0.2; waited=$((waited + 1))
        ((waited < 100)) || die "supervisor did not start; see $STATE/logs/supervisor.log"
    done
    log "started process group $(pgid); waiting up to ${TIMEOUT}s for health"
    local started=$SECONDS
    if ! health "$TIMEOUT"; then
        log "stack did not become healthy; last log lines:"
        tail -n 5 "$STATE"/logs/*.log >&2 || true
        stop
        exit 1
    fi
    log "healthy after $((SECONDS - started)) s: api http://$BIND:$API_PORT, mlflow http://$BIND:$MLFLOW_PORT, feast http://$BIND:$FEAST_PORT"
}

# Bounded health checks: each wait shares the overall deadline.
health() {
    local budget="$1" deadline=$((SECONDS + $1)) name
    for name in "${SERVICES[@]}"; do
        [[ -s "$STATE/pids/$name" ]] && kill -0 "$(cat "$STATE/pids/$name")" 2>/dev/null \
            || { log "$name is not running"; return 1; }
    done
    remaining() { local r=$((deadline - SECONDS)); ((r > 1)) && echo "$r" || echo 1; }
    "${HELPER[@]}" wait-http "http://$BIND:$MLFLOW_PORT/health" "$(remaining)" || return 1
    "${HELPER[@]}" wait-airflow "http://$BIND:$API_PORT" "$(remaining)" || return 1
    "${HELPER[@]}" wait-celery "$REDIS/$BROKER_DB" "$(remaining)" "default@$(hostname)" "gpu@$(hostname)" \
        || return 1
    "${HELPER[@]}" wait-http "http://$BIND:$FEAST_PORT/health" "$(remaining)" || return 1
    : "$budget"
}

stop() {
    local group
    group="$(pgid)" || { log "not running"; return 0; }
    if kill -0 -- "-$group" 2>/dev/null; then
        log "stopping process group $group"
        kill -TERM -- "-$group" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 -- "-$group" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        if kill -0 -- "-$group" 2>/dev/null; then
            log "still running after ${STOP_TIMEOUT}s: KILL"
            kill -KILL -- "-$group" 2>/dev/null || true
            # a killed process still exists until the kernel has torn it down and its parent reaped it
            deadline=$((SECONDS + 30))
            while kill -0 -- "-$group" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
            kill -0 -- "-$group" 2>/dev/null && die "process group $group still has processes after KILL"
        fi
    fi
    rm -f "$STATE/pgid"
    log "stopped"
}

status() {
    local group name pid rc=0
    group="$(pgid)" || { echo "stack: not running"; return 3; }
    echo "stack: process group $group, state $STATE"
    for name in "${SERVICES[@]}"; do
        pid="$(cat "$STATE/pids/$name" 2>/dev/null || true)"
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            echo "  $name: running (pid $pid)"
        else
            echo "  $name: DOWN"; rc=1
        fi
    done
    ((rc == 0)) && health 15 || rc=1
    return "$rc"
}

purge() {
    stop
    "${HELPER[@]}" drop-dbs "$PG" "$NAME"
    "${HELPER[@]}" drop-ledger-roles "$PG" "$NAME"
    "${HELPER[@]}" flush-redis "$REDIS/$REDIS_DB"
    "${HELPER[@]}" flush-redis "$REDIS/$BROKER_DB"
    rm -rf "$STATE"
    log "purged databases ${NAME}*, Redis indexes $REDIS_DB and $BROKER_DB, and $STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) cat "$STATE/stack.env" ;;
    purge) purge ;;
    _supervise) supervise ;;
    *) echo "usage: $0 start|stop|status|env|purge" >&2; exit 2 ;;
esac
