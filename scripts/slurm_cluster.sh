#!/usr/bin/env bash
# Stand up (or stop) a single-node Slurm cluster on this machine, for testing the slurm profile.
#
#   scripts/slurm_cluster.sh start    # idempotent: starts what is not running, waits until usable
#   scripts/slurm_cluster.sh stop     # stops the daemons by their pid files (never by name)
#   scripts/slurm_cluster.sh status   # daemons, node state; exit 0 only when everything is up
#   scripts/slurm_cluster.sh env      # prints `export SLURM_CONF=...` for eval in a shell
#
# Daemons: munged, mariadbd (loopback only) + slurmdbd for accounting (so `sacct` works, which the
# snakemake slurm executor polls), slurmctld and slurmd. The node advertises two fake GPUs (gres
# backed by character devices) so GPU requests can be scheduled and accounted without hardware.
# Partition `main` (default) is preemptible by partition `urgent`; preempted jobs are requeued.
#
# All state (configs, spool, logs, pid files, database, munge key) lives under one directory:
#   MARKUP2IM_SLURM_DIR        state directory (default: <repo>/.slurm, or /var/tmp/markup2im-slurm
#                              when other users cannot reach the repository, as under /root)
#   MARKUP2IM_SLURM_PORT_BASE  first of four loopback TCP ports: slurmctld, slurmd, slurmdbd,
#                              mariadb (default: 6817)
#   MARKUP2IM_SLURM_TIMEOUT    seconds to wait for each daemon to come up (default: 60)
#
# Starting needs root. Missing Debian packages are installed with apt-get when run as root:
#   slurmctld slurmd slurm-client slurmdbd munge mariadb-server
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# munged and mariadbd run as their own users and munged wants its socket reachable by everyone:
# every existing directory on the way to the state directory must be searchable by others.
world_searchable() {
    local dir=$1 mode
    while [[ $dir != / && -n $dir ]]; do
        if [[ -d $dir ]]; then
            mode=$(stat -c %A "$dir")
            [[ ${mode:9:1} == [xt] ]] || return 1
        fi
        dir=$(dirname "$dir")
    done
}

if [[ -n ${MARKUP2IM_SLURM_DIR:-} ]]; then
    STATE_DIR=$MARKUP2IM_SLURM_DIR
elif world_searchable "$REPO_ROOT/.slurm"; then
    STATE_DIR=$REPO_ROOT/.slurm
else # e.g. a checkout under /root
    STATE_DIR=/var/tmp/markup2im-slurm
fi
PORT_BASE="${MARKUP2IM_SLURM_PORT_BASE:-6817}"
WAIT_S="${MARKUP2IM_SLURM_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
CLUSTER_NAME="markup2im"
CONFIG_CHANGED=0
ACCOUNT="markup2im"

CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))

ETC="$STATE_DIR/etc"
RUN="$STATE_DIR/run"
LOG="$STATE_DIR/log"
MUNGE_DIR="$STATE_DIR/munge"
DB_DIR="$STATE_DIR/mariadb"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
DB_SOCKET="$DB_DIR/mysqld.sock"
export SLURM_CONF="$ETC/slurm.conf"
# The snakemake jobstep drops SLURM_* variables (SLURM_CONF included) before its nested `srun`,
# so the config must also be found at Slurm's compiled-in default path: a symlink to ours.
SYSTEM_CONF=/etc/slurm/slurm.conf

# name | pid file | executable the pid must belong to (guards against a recycled pid)
DAEMONS=(
    "munged|$MUNGE_DIR/munged.pid|/usr/sbin/munged"
    "mariadbd|$DB_DIR/mariadbd.pid|/usr/sbin/mariadbd"
    "slurmdbd|$RUN/slurmdbd.pid|/usr/sbin/slurmdbd"
    "slurmctld|$RUN/slurmctld.pid|/usr/sbin/slurmctld"
    "slurmd|$RUN/slurmd.pid|/usr/sbin/slurmd"
)

log() { echo "slurm_cluster: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Prints the pid recorded for a daemon when that process is alive and runs the expected binary.
daemon_pid() {
    local pidfile=$1 exe=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -d /proc/$pid ]] || return 1
    # /proc/PID/exe needs privileges for other users' processes; fall back to the command line.
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe"* ]] ||
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^\S*$(basename "$exe")\b"; then
        echo "$pid"
        return 0
    fi
    return 1
}

daemon_field() { # daemon_field NAME FIELD(2=pidfile,3=exe)
    local entry
    for entry in "${DAEMONS[@]}"; do
        if [[ ${entry%%|*} == "$1" ]]; then
            cut -d'|' -f"$2" <<<"$entry"
            return 0
        fi
    done
    return 1
}

running() { daemon_pid "$(daemon_field "$1" 2)" "$(daemon_field "$1" 3)" >/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${limit}s (logs in $LOG and $STATE_DIR/*/*.log)"
        fi
        sleep 0.5
    done
}

ensure_packages() {
    local missing=()
    local bin
    for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sinfo /usr/sbin/slurmdbd \
        /usr/sbin/munged /usr/sbin/mariadbd; do
        [[ -x $bin ]] || missing+=("$bin")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        die "missing ${missing[*]}; install as root: apt-get install ${PACKAGES[*]}"
    fi
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_configs() {
    local host=$1 cpus mem_mb def_mem
    cpus=$(nproc)
    mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024))
    def_mem=$((mem_mb / cpus))
    ((def_mem > 1024)) && def_mem=1024

    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE_DIR/spool/ctld" "$STATE_DIR/spool/d" "$STATE_DIR/dev"
    local i
    for i in 0 1; do # fake GPUs: Slurm wants character devices, /dev/null's numbers will do
        [[ -c $STATE_DIR/dev/nvidia$i ]] || mknod -m 666 "$STATE_DIR/dev/nvidia$i" c 1 3
    done

    cat >"$ETC/slurm.conf.new" <<EOF
# Written by scripts/slurm_cluster.sh; regenerated on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
MinJobAge=300
KillWait=5
InactiveLimit=0
JobRequeue=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (else the default /run/munge one is used)
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
    if cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf"; then
        rm "$ETC/slurm.conf.new"
    else
        mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
        CONFIG_CHANGED=1
    fi

    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=$STATE_DIR/dev/nvidia[0-1]
EOF

    local db_pass
    db_pass=$(cat "$DB_DIR/slurm.password")
    (
        umask 077
        cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_pass
StorageLoc=slurm_acct_db
EOF
    )
}

start_munge() {
    running munged && return 0
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 0755 "$MUNGE_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" \
        --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
    wait_for "$WAIT_S" munged bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "$1"; }

start_mariadb() {
    mkdir -p "$DB_DIR"
    if [[ ! -s $DB_DIR/slurm.password ]]; then
        (
            umask 077
            head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_DIR/slurm.password"
        )
    fi
    if ! running mariadbd; then
        if [[ ! -d $DB_DIR/data/mysql ]]; then
            rm -rf "$DB_DIR/data"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
                --auth-root-authentication-method=socket --skip-test-db \
                >"$LOG/mariadb-install.log" 2>&1 ||
                die "mariadb-install-db failed, see $LOG/mariadb-install.log"
        fi
        chown -R mysql:mysql "$DB_DIR/data"
        chown mysql:mysql "$DB_DIR"
        rm -f "$DB_SOCKET"
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --socket="$DB_SOCKET" --pid-file="$DB_DIR/mariadbd.pid" \
            --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mariadb.log" \
            --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
        wait_for "$WAIT_S" mariadbd mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    fi
    local pass
    pass=$(cat "$DB_DIR/slurm.password")
    db_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    running slurmdbd && return 0
    /usr/sbin/slurmdbd
    wait_for "$WAIT_S" slurmdbd sacctmgr -n list cluster
}

register_accounting() {
    local user
    if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=cluster)" ]]; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if [[ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ]]; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER_NAME" \
            description="markup2im test jobs" organization=markup2im >/dev/null
    fi
    for user in root ${SUDO_USER:-}; do
        if [[ -z "$(sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user)" ]]; then
            sacctmgr -i add user "$user" account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null
        fi
    done
}

node_ready() {
    local state
    state=$(sinfo -h -N -n "$1" -o %T 2>/dev/null | head -1)
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

link_system_conf() {
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        if [[ ! -L $SYSTEM_CONF || "$(readlink "$SYSTEM_CONF")" != */etc/slurm.conf ]]; then
            die "$SYSTEM_CONF exists and is not a link made by this script; this machine has" \
                "its own Slurm configuration, use that cluster instead"
        fi
        if [[ "$(readlink "$SYSTEM_CONF")" != "$SLURM_CONF" ]]; then
            log "re-pointing $SYSTEM_CONF from $(readlink "$SYSTEM_CONF") (one cluster per machine)"
        fi
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"
}

cmd_start() {
    ((EUID == 0)) || die "starting the cluster needs root"
    world_searchable "$STATE_DIR" ||
        die "the munge and mysql users cannot reach $STATE_DIR; set MARKUP2IM_SLURM_DIR elsewhere"
    # a unix socket path has at most 107 bytes
    ((${#MUNGE_SOCKET} < 100)) || die "state directory path too long for sockets: $STATE_DIR"
    ensure_packages
    local host t0=$SECONDS
    host=$(hostname -s)
    mkdir -p "$STATE_DIR" "$LOG"
    chmod 0755 "$STATE_DIR"
    start_munge
    start_mariadb
    write_configs "$host"
    link_system_conf
    start_slurmdbd
    register_accounting
    if ! running slurmctld; then
        /usr/sbin/slurmctld
    elif ((CONFIG_CHANGED)); then
        log "slurm.conf changed: reconfiguring the running daemons"
        scontrol reconfigure
    fi
    wait_for "$WAIT_S" slurmctld scontrol ping
    if ! running slurmd; then
        /usr/sbin/slurmd -N "$host"
    fi
    wait_for "$WAIT_S" "node $host" node_ready "$host"
    wait_for "$WAIT_S" sacct sacct -n -X -a -S now-1hours
    log "cluster $CLUSTER_NAME up in $((SECONDS - t0))s (SLURM_CONF=$SLURM_CONF)"
}

cmd_stop() {
    local entry name pidfile exe pid i
    if running slurmctld; then # the cluster goes away, so do its jobs
        local ids
        ids=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${ids// /} ]]; then
            # shellcheck disable=SC2086 # one argument per job id
            scancel --full --quiet $ids >/dev/null 2>&1 || true
        fi
    fi
    # reverse start order: slurmd first, munged last
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        entry=${DAEMONS[$i]}
        IFS='|' read -r name pidfile exe <<<"$entry"
        if pid=$(daemon_pid "$pidfile" "$exe"); then
            kill -TERM "$pid" 2>/dev/null || true
            local deadline=$((SECONDS + 30))
            while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.2; done
            if [[ -d /proc/$pid ]]; then
                log "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $name (pid $pid)"
        fi
        rm -f "$pidfile"
    done
    if [[ -L $SYSTEM_CONF && "$(readlink "$SYSTEM_CONF")" == "$SLURM_CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

cmd_status() {
    local entry name pidfile exe pid up=0
    for entry in "${DAEMONS[@]}"; do
        IFS='|' read -r name pidfile exe <<<"$entry"
        if pid=$(daemon_pid "$pidfile" "$exe"); then
            echo "$name: running (pid $pid)"
            up=$((up + 1))
        else
            echo "$name: stopped"
        fi
    done
    echo "state directory: $STATE_DIR"
    echo "SLURM_CONF=$SLURM_CONF"
    if ((up == ${#DAEMONS[@]})); then
        sinfo -N -o "%N %P %T %c %m %G" || true
        return 0
    fi
    return 3
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export SLURM_CONF=$(printf %q "$SLURM_CONF")" ;;
*)
    echo "usage: $0 {start|stop|status|env}" >&2
    exit 2
    ;;
esac
