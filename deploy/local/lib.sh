# shellcheck shell=bash
# Helpers for deploy/local/up.sh. Sourced, not executed.

say() { printf '%s\n' "$*"; }

# fail SERVICE MESSAGE [HINT...]: report on stderr and exit non-zero.
# FAILED tells up.sh's EXIT trap that the failure was already reported.
# shellcheck disable=SC2034
FAILED=0
# shellcheck disable=SC2034
fail() {
    local svc=$1 msg=$2 hint
    shift 2
    FAILED=1
    printf 'up.sh: %s: %s\n' "$svc" "$msg" >&2
    for hint in "$@"; do
        printf '  try: %s\n' "$hint" >&2
    done
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

ME=$(id -un)

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo -- "$@"
    else
        printf 'up.sh: need root for "%s", but this is not root and sudo is not installed\n' "$*" >&2
        return 1
    fi
}

# Run a command as the postgres OS user (peer auth over the Unix socket).
# From / because postgres may not be allowed into the caller's directory.
as_postgres() {
    (
        cd /
        if [[ $ME == postgres ]]; then
            "$@"
        elif [[ $EUID -eq 0 ]] && have runuser; then
            runuser -u postgres -- "$@"
        elif [[ $EUID -eq 0 ]]; then
            su -s /bin/bash postgres -c "$(printf '%q ' "$@")"
        elif have sudo; then
            sudo -u postgres -- "$@"
        else
            printf 'up.sh: cannot run "%s" as postgres (not root, no sudo)\n' "$*" >&2
            return 1
        fi
    )
}

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# wait_for TIMEOUT CHECK [ALIVE]: run CHECK every second until it succeeds
# (return 0) or TIMEOUT seconds have passed (return 1). ALIVE, when given,
# is consulted after a 5 s grace period: once it fails (the daemon died),
# the wait stops early (return 2).
wait_for() {
    local timeout=$1 check=$2 alive=${3:-} start=$SECONDS
    while :; do
        if "$check"; then
            return 0
        fi
        if ((SECONDS - start >= timeout)); then
            return 1
        fi
        if [[ -n $alive ]] && ((SECONDS - start >= 5)) && ! "$alive"; then
            if "$check"; then
                return 0
            fi
            return 2
        fi
        sleep 1
    done
}

APT_UPDATED=0
APT_LOG=""

# apt_install SERVICE PACKAGE...: install Debian packages (apt-get update
# once per run). The chatter goes to a log file that is named on failure.
apt_install() {
    local svc=$1
    shift
    have apt-get || fail "$svc" "not installed and apt-get is not available" "install $* by hand"
    [[ -n $APT_LOG ]] || APT_LOG=$(mktemp /tmp/tocsin-up-apt.XXXXXX)
    say "$svc: installing $* with apt-get (log: $APT_LOG)"
    if ((!APT_UPDATED)); then
        as_root apt-get -o DPkg::Lock::Timeout=120 update >>"$APT_LOG" 2>&1 ||
            fail "$svc" "apt-get update failed" "tail -n 30 $APT_LOG"
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=120 install -y --no-install-recommends "$@" >>"$APT_LOG" 2>&1 ||
        fail "$svc" "apt-get install $* failed" "tail -n 30 $APT_LOG"
}
