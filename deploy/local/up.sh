#!/usr/bin/env bash
# Prepare Tocsin's local stack on one Debian/Ubuntu machine, without systemd:
# PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379, RabbitMQ on
# 127.0.0.1:5672, the database $TOCSIN_DB_NAME (default tocsin), and the
# dashboard browser test's chromium and playwright-core (browser-deps.sh).
#
# Idempotent: a service that already answers is used as it is; one that is
# missing is installed with apt-get; one that is down is started and waited
# for. Safe to run again and again. Migrations are applied by the binaries.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

case "${1:-}" in
'') ;;
-h | --help)
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    printf 'usage: %s (takes no arguments; see --help)\n' "$0" >&2
    exit 2
    ;;
esac

HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
AMQP_PORT=5672
DB_NAME=${TOCSIN_DB_NAME:-tocsin}
PG_TIMEOUT=60
REDIS_TIMEOUT=60
RABBIT_TIMEOUT=90
REDIS_DIR=/var/lib/redis
REDIS_LOG=/var/log/redis/ci.log
RABBIT_LOGS=/var/log/rabbitmq

# ---------------------------------------------------------------- PostgreSQL

pg_ready() {
    have pg_isready && timeout 10 pg_isready -q -h "$HOST" -p "$PG_PORT" -t 3
}

# psql as the current OS user over TCP; extra arguments are appended.
pg_psql() {
    timeout 15 psql -X -w -q -h "$HOST" -p "$PG_PORT" -U "$ME" -d postgres "$@"
}

# Can the current OS user log in over TCP? Leaves the error in PG_ERR.
PG_ERR=""
pg_login_ok() {
    PG_ERR=$(pg_psql -tAc 'SELECT 1' 2>&1 >/dev/null) && return 0
    PG_ERR=${PG_ERR//$'\n'/ }
    return 1
}

# Prints "VERSION NAME STATUS LOGFILE" of the local cluster on $PG_PORT.
pg_cluster() {
    have pg_lsclusters || return 0
    pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {
        lf = $7; if (lf == "") lf = "/var/log/postgresql/postgresql-" $1 "-" $2 ".log"
        print $1, $2, $4, lf; exit }'
}

# Add trust rules for 127.0.0.1 and ::1 at the top of pg_hba.conf (those not
# already there), then reload. Returns 1 when there was nothing to add.
pg_trust_localhost() {
    local hba current rule
    local -a add=()
    hba=$(as_postgres psql -X -w -p "$PG_PORT" -d postgres -tAc 'SHOW hba_file') || return 1
    current=$(as_root cat "$hba") || return 1
    for rule in "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust"; do
        if ! awk -v r="$rule" '{ $1 = $1 } $0 == r { found = 1 } END { exit !found }' <<<"$current"; then
            add+=("$rule")
        fi
    done
    ((${#add[@]})) || return 1
    [[ -e $hba.before-tocsin ]] || as_root cp -p "$hba" "$hba.before-tocsin"
    {
        printf '# Added by tocsin deploy/local/up.sh: passwordless TCP logins from this\n'
        printf '# machine. For a local development machine only.\n'
        printf '%s\n' "${add[@]}" "" "$current"
    } | as_root tee "$hba" >/dev/null
    as_postgres psql -X -w -q -p "$PG_PORT" -d postgres -tAc 'SELECT pg_reload_conf()' >/dev/null
    local joined
    joined=$(printf '"%s", ' "${add[@]}")
    say "postgresql: added ${joined%, } at the top of $hba (local development machine; backup: $hba.before-tocsin) and reloaded"
}

# Make sure the current OS user can log in over TCP: create its superuser
# role if missing, and trust localhost when the role has no password.
pg_ensure_login() {
    pg_login_ok && return 0
    local exists
    exists=$(as_postgres psql -X -w -p "$PG_PORT" -d postgres -tA -v r="$ME" \
        <<<"SELECT 1 FROM pg_roles WHERE rolname = :'r'" 2>&1) ||
        fail postgresql "cannot log in as $ME on $HOST:$PG_PORT ($PG_ERR), and cannot reach the server as the postgres OS user to fix it: $exists" \
            "create a superuser role \"$ME\" that can log in from $HOST without a password"
    if [[ $exists != 1 ]]; then
        as_postgres createuser -s -p "$PG_PORT" "$ME" ||
            fail postgresql "could not create the role $ME" "su postgres -c 'createuser -s $ME'"
        say "postgresql: created superuser role $ME"
        pg_login_ok && return 0
    fi
    case $PG_ERR in
    *password* | *authentication* | *pg_hba.conf*)
        if pg_trust_localhost && wait_for 5 pg_login_ok; then
            return 0
        fi
        ;;
    *) ;;
    esac
    fail postgresql "$ME cannot log in on $HOST:$PG_PORT: $PG_ERR" \
        "psql -h $HOST -d postgres -c 'select 1'" "check the server's pg_hba.conf"
}

ensure_postgresql() {
    local svc=postgresql where="$HOST:$PG_PORT"
    if pg_ready; then
        say "$svc: already running on $where"
    elif tcp_open "$HOST" "$PG_PORT"; then
        # Something listens: a server starting or stopping, or one whose
        # client tools are missing. Do not start a second one.
        have pg_isready || apt_install "$svc" postgresql-client
        wait_for "$PG_TIMEOUT" pg_ready ||
            fail "$svc" "something listens on $where but is not accepting connections after ${PG_TIMEOUT}s" \
                "pg_isready -h $HOST -p $PG_PORT" "pg_lsclusters"
        say "$svc: running on $where (was starting up)"
    else
        if ! have pg_ctlcluster || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
            apt_install "$svc" postgresql
        fi
        # Debian's packaging may have started a cluster while installing.
        local cluster ver name status log
        cluster=$(pg_cluster)
        if [[ -z $cluster ]]; then
            if [[ -n $(pg_lsclusters -h 2>/dev/null) ]]; then
                fail "$svc" "no PostgreSQL cluster is configured on port $PG_PORT" \
                    "pg_lsclusters, then set port = $PG_PORT in one cluster's postgresql.conf"
            fi
            ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
            as_root pg_createcluster "$ver" main >/dev/null ||
                fail "$svc" "pg_createcluster $ver main failed" "pg_createcluster $ver main"
            say "$svc: created cluster $ver/main"
            cluster=$(pg_cluster)
            [[ -n $cluster ]] || fail "$svc" "the new cluster $ver/main is not on port $PG_PORT" "pg_lsclusters"
        fi
        read -r ver name status log <<<"$cluster"
        if [[ $status == online* ]] && wait_for 5 pg_ready; then
            say "$svc: running on $where (cluster $ver/$name)"
        else
            if [[ $status == online* ]]; then
                fail "$svc" "cluster $ver/$name is running but does not accept connections on $where" \
                    "check listen_addresses in /etc/postgresql/$ver/$name/postgresql.conf" "tail -n 30 $log"
            fi
            local out
            out=$(as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start 2>&1) ||
                fail "$svc" "pg_ctlcluster $ver $name start failed: ${out//$'\n'/ }" "tail -n 30 $log"
            wait_for "$PG_TIMEOUT" pg_ready ||
                fail "$svc" "cluster $ver/$name started but $where is not ready after ${PG_TIMEOUT}s" "tail -n 30 $log"
            say "$svc: started (cluster $ver/$name on $where)"
        fi
    fi
    have psql || apt_install "$svc" postgresql-client
    pg_ensure_login
}

ensure_database() {
    local found out
    found=$(pg_psql -tA -v db="$DB_NAME" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'" 2>&1) ||
        fail database "could not look up database $DB_NAME: ${found//$'\n'/ }" "psql -h $HOST -d postgres"
    if [[ $found == 1 ]]; then
        say "database: $DB_NAME already exists"
        return
    fi
    out=$(timeout 30 createdb -w -h "$HOST" -p "$PG_PORT" -U "$ME" "$DB_NAME" 2>&1) ||
        fail database "createdb $DB_NAME failed: ${out//$'\n'/ }" "createdb -h $HOST $DB_NAME"
    say "database: created $DB_NAME"
}

# --------------------------------------------------------------------- Redis

# Prints the server's reply to PING (redis-cli, or raw RESP when missing).
redis_ping() {
    if have redis-cli; then
        timeout 5 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>&1
    else
        # shellcheck disable=SC2016 # expanded by the inner bash
        timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && head -n 1 <&3' \
            "$HOST" "$REDIS_PORT" 2>&1 | tr -d '\r+'
    fi
}

redis_ready() { [[ $(redis_ping || true) == PONG ]]; }
redis_alive() { ! have pgrep || pgrep -x redis-server >/dev/null; }

ensure_redis() {
    local svc=redis where="$HOST:$REDIS_PORT" out
    if redis_ready; then
        say "$svc: already running on $where"
        return
    fi
    if tcp_open "$HOST" "$REDIS_PORT"; then
        # Loading its data set, or something else entirely (a password?).
        wait_for "$REDIS_TIMEOUT" redis_ready ||
            fail "$svc" "something listens on $where but PING answers: $(redis_ping | head -n 1)" \
                "redis-cli -h $HOST -p $REDIS_PORT ping"
        say "$svc: running on $where (was starting up)"
        return
    fi
    if ! have redis-server; then
        apt_install "$svc" redis-server
        if wait_for 3 redis_ready; then
            say "$svc: running on $where (started by the package)"
            return
        fi
    fi
    as_root mkdir -p "$REDIS_DIR" "$(dirname "$REDIS_LOG")"
    out=$(as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$REDIS_DIR" --logfile "$REDIS_LOG" 2>&1) ||
        fail "$svc" "redis-server failed to start: ${out//$'\n'/ }" "tail -n 30 $REDIS_LOG"
    local rc=0
    wait_for "$REDIS_TIMEOUT" redis_ready redis_alive || rc=$?
    case $rc in
    0) say "$svc: started on $where" ;;
    2) fail "$svc" "redis-server exited right after starting" "tail -n 30 $REDIS_LOG" ;;
    *) fail "$svc" "started, but $where does not answer PING after ${REDIS_TIMEOUT}s" "tail -n 30 $REDIS_LOG" ;;
    esac
}

# ------------------------------------------------------------------ RabbitMQ

# rabbitmq-diagnostics only works for root (the Debian wrapper switches to
# the rabbitmq user, which holds the Erlang cookie) or rabbitmq itself.
rabbit_diag_usable() { have rabbitmq-diagnostics && [[ $EUID -eq 0 || $ME == rabbitmq ]]; }
rabbit_node_up() { rabbit_diag_usable && timeout 20 rabbitmq-diagnostics -q ping -t 10 >/dev/null 2>&1; }

# Does the port answer the AMQP 0-9-1 protocol header with a method frame?
# (Used only without rabbitmq-diagnostics: the broker logs a warning for it.)
amqp_answers() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    [[ $(timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "AMQP\x00\x00\x09\x01" >&3 && head -c 1 <&3 | od -An -tx1' \
        "$HOST" "$AMQP_PORT" 2>/dev/null) == *01* ]]
}

rabbit_ready() {
    tcp_open "$HOST" "$AMQP_PORT" || return 1
    if rabbit_node_up; then
        return 0
    fi
    # The diagnostics could not reach a local node (not root, or a broker
    # this machine does not manage): ask the port itself.
    amqp_answers
}

rabbit_alive() { ! have pgrep || pgrep -x beam.smp >/dev/null; }

ensure_rabbitmq() {
    local svc=rabbitmq where="$HOST:$AMQP_PORT" out
    if rabbit_ready; then
        say "$svc: already running on $where"
        return
    fi
    if tcp_open "$HOST" "$AMQP_PORT"; then
        wait_for "$RABBIT_TIMEOUT" rabbit_ready ||
            fail "$svc" "something listens on $where but does not answer AMQP" \
                "rabbitmq-diagnostics status" "ls -t $RABBIT_LOGS"
        say "$svc: running on $where (was starting up)"
        return
    fi
    if ! have rabbitmq-server; then
        apt_install "$svc" rabbitmq-server
    fi
    local started="started on $where"
    if rabbit_node_up; then
        # Booting already (started by the package or a previous run).
        started="running on $where (was booting)"
    else
        out=$(as_root rabbitmq-server -detached 2>&1) ||
            fail "$svc" "rabbitmq-server -detached failed: ${out//$'\n'/ }" "ls -t $RABBIT_LOGS"
    fi
    local rc=0
    wait_for "$RABBIT_TIMEOUT" rabbit_ready rabbit_alive || rc=$?
    case $rc in
    0) say "$svc: $started" ;;
    2) fail "$svc" "the broker exited while starting" "ls -t $RABBIT_LOGS (newest log first)" "rabbitmq-server (in the foreground, to see the error)" ;;
    *) fail "$svc" "$where not ready after ${RABBIT_TIMEOUT}s" "rabbitmq-diagnostics status" "ls -t $RABBIT_LOGS (newest log first)" ;;
    esac
}

# ---------------------------------------------------------------------- main

# A failure that fail() did not report (a bug, or a surprise from a tool):
# still say which step and command, rather than exiting silently.
STEP=setup
START_US=${EPOCHREALTIME//[!0-9]/}
on_exit() {
    local rc=$?
    if ((rc != 0 && !FAILED)); then
        printf 'up.sh: %s: unexpected failure (exit %s) in: %s\n' "$STEP" "$rc" "$BASH_COMMAND" >&2
        printf '  try: bash -x %s\n' "$0" >&2
    fi
}
trap on_exit EXIT

# The demo and benchmarks talk HTTP with curl; a minimal image may lack it.
STEP=tools
have curl || apt_install tools curl ca-certificates
STEP=postgresql
ensure_postgresql
STEP=redis
ensure_redis
STEP=rabbitmq
ensure_rabbitmq
STEP=database
ensure_database
# The dashboard's browser test: Debian chromium and playwright-core (npm ci).
STEP=browser
"$HERE/browser-deps.sh"
elapsed_ms=$(((${EPOCHREALTIME//[!0-9]/} - START_US) / 1000))
say "up.sh: local stack ready in $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100))s"
