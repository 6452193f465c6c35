#!/usr/bin/env bash
# Bring up / stop / inspect a real single-node SLURM cluster (with accounting)
# on this Debian machine, for qlbench's cluster tests and CI.
#
#   tests/cluster/local_slurm.sh start    # idempotent; ~15 s from nothing
#   tests/cluster/local_slurm.sh stop     # stops only what this script started
#   tests/cluster/local_slurm.sh status   # exit 0 iff the cluster is usable
#
# Needs root and Debian/Ubuntu (apt).  There is no systemd here: the daemons
# (munged, mariadbd, slurmdbd, slurmctld, slurmd) are started directly.
# Slurm state, spool, pid files, logs and configs live in one folder,
# $QLBENCH_SLURM_DIR (default /tmp/qlbench-slurm); /etc/slurm/*.conf are symlinks
# to it so that sbatch/squeue/sacct work from any environment.  MariaDB keeps
# its data in the Debian default /var/lib/mysql (database slurm_acct_db).
#
# Cluster "qlbench", partition "debug" (default), account "qlbench" (root's
# default account).  Submit with e.g.  sbatch -A qlbench -p debug --wrap 'sleep 1'
#
# Environment knobs:
#   QLBENCH_SLURM_DIR     state folder                  (/tmp/qlbench-slurm)
#   QLBENCH_SLURM_CPUS    CPUs the node advertises      (4; may exceed real cores)
#   QLBENCH_SLURM_CGROUP  auto|yes|no  memory enforcement through cgroup v1 (auto)
#
# With cgroups (auto, when a cgroup-v1 memory controller is mounted), a job over
# its --mem ends OUT_OF_MEMORY.  The first start on a state folder runs a
# self-test (two tiny jobs); if job steps fail under the cgroup plugins it falls
# back to proctrack/linuxproc + task/none (memory then is not enforced) and says so.
set -euo pipefail

DIR=$(realpath -m "${QLBENCH_SLURM_DIR:-/tmp/qlbench-slurm}")
NCPUS=${QLBENCH_SLURM_CPUS:-4}
NGPUS=2  # not real: see gres.conf
CGROUP_WANT=${QLBENCH_SLURM_CGROUP:-auto}
CLUSTER=qlbench
ACCOUNT=qlbench
PARTITION=debug
HOST=$(hostname -s)
ETC=$DIR/etc
CONF=$ETC/slurm.conf
PIDS=$DIR/pids
LOGS=$DIR/log
MYSQL_SOCK=/run/mysqld/mysqld.sock
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
MARK="# written by qlbench tests/cluster/local_slurm.sh"

say() { echo "local_slurm: $*"; }
warn() { echo "local_slurm: $*" >&2; }
die() { warn "ERROR: $*"; exit 1; }

logfile_of() {
    case $1 in
        munged) echo /var/log/munge/munged.log ;;
        *) echo "$LOGS/$1.log" ;;
    esac
}

show_log() {  # name: print the tail of a daemon's logs
    local f
    for f in "$(logfile_of "$1")" "$LOGS/$1.out"; do
        if [[ -s $f ]]; then
            warn "---- last lines of $f ----"
            tail -n 25 "$f" >&2 || true
            return 0
        fi
    done
}

fail() {  # name message
    warn "ERROR: $2"
    show_log "$1"
    exit 1
}

# ---------------------------------------------------------------- processes
# state of a pid from /proc/PID/stat ("" if gone). PID 1 here does not reap
# promptly, so a stopped daemon lingers as a zombie (Z): never trust kill -0.
proc_state() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    echo "${s%% *}"
}

pid_running() {  # pid: alive, neither zombie nor dead, whatever it runs
    local st
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    st=$(proc_state "$1")
    [[ -n $st && $st != Z && $st != X ]]
}

# pid is alive (not zombie/dead) and runs the expected program
alive_as() {  # pid comm
    local pid=$1 comm
    pid_running "$pid" || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$2" ]]
}

our_pid() {  # name -> prints pid if our recorded process is alive
    local pid
    pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
    alive_as "$pid" "$1" && echo "$pid"
}

foreign_pids() {  # name -> live processes of that name not recorded as ours
    local ours p
    ours=$(cat "$PIDS/$1.pid" 2>/dev/null || true)
    for p in $(pgrep -x "$1" 2>/dev/null || true); do
        [[ $p == "$ours" ]] && continue
        alive_as "$p" "$1" && echo "$p"
    done
    return 0
}

# start a daemon in the foreground, detached (own session, no inherited lock fd)
launch() {  # name cmd...
    local name=$1 pid
    shift
    SLURM_CONF=$CONF setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    # until the exec, $pid is still the forked shell or setsid, and every later check that asks "is our <name>
    # alive?" by its name would say no (a busy machine made CI fail on this): return once it is <name>, or dead
    local i
    for i in $(seq 100); do
        if alive_as "$pid" "$name" || ! pid_running "$pid"; then break; fi
        sleep 0.05
    done
}

wait_until() {  # name seconds check-cmd...   (fails early if our daemon died)
    local name=$1 secs=$2 end
    shift 2
    end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        "$@" >/dev/null 2>&1 && return 0
        if [[ -f $PIDS/$name.pid ]] && ! our_pid "$name" >/dev/null; then
            sleep 0.3
            "$@" >/dev/null 2>&1 && return 0
            fail "$name" "$name exited during start-up"
        fi
        sleep 0.2
    done
    return 1
}

# ------------------------------------------------------------------- checks
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mysql_ok() { mariadb-admin --socket="$MYSQL_SOCK" -uroot ping >/dev/null 2>&1; }
dbd_ok() { timeout 10 sacctmgr -nP show cluster format=cluster >/dev/null 2>&1; }
ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { timeout 10 sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1; }
node_ok() {
    case $(node_state) in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}
sacct_ok() { timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1; }
account_ok() {
    [[ -n $(timeout 10 sacctmgr -nP show assoc where user=root account=$ACCOUNT \
        cluster=$CLUSTER format=account 2>/dev/null) ]]
}
daemon_up() { our_pid "$1" >/dev/null || [[ -n $(foreign_pids "$1") ]]; }
healthy() {
    daemon_up slurmd && daemon_up slurmctld && daemon_up slurmdbd &&
    [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$CONF" ]] &&
        munge_ok && ctld_ok && node_ok && sacct_ok && account_ok
}

# ---------------------------------------------------------------- pieces
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

ensure_packages() {
    local p missing=()
    for p in "${PKGS[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} (apt-get) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/apt.log" 2>&1 || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >>"$DIR/apt.log" 2>&1 ||
        { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install failed"; }
}

ensure_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    munge_ok && return 0
    install -d -o munge -g munge -m 755 /run/munge
    [[ -d /var/log/munge ]] || install -d -o munge -g munge -m 700 /var/log/munge
    [[ -d /var/lib/munge ]] || install -d -o munge -g munge -m 711 /var/lib/munge
    rm -f /run/munge/munged.pid
    # munged forks and returns once it is ready; it is paranoid about permissions
    runuser -u munge -- munged 9>&- >>"$LOGS/munged.out" 2>&1 ||
        fail munged "munged did not start"
    local i
    for i in $(seq 50); do
        [[ -s /run/munge/munged.pid ]] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$PIDS/munged.pid" 2>/dev/null || true
    wait_until munged 10 munge_ok || fail munged "munge does not answer"
}

ensure_mariadb() {
    mysql_ok || {
        install -d -o mysql -g mysql -m 755 /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            say "initialising MariaDB data directory"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql \
                >"$LOGS/mariadb-install.log" 2>&1 || fail mariadb-install "mariadb-install-db failed"
        fi
        touch "$LOGS/mariadbd.log"
        chown mysql:mysql "$LOGS/mariadbd.log"
        launch mariadbd mariadbd --user=mysql --socket="$MYSQL_SOCK" --bind-address=127.0.0.1 \
            --log-error="$LOGS/mariadbd.log"
        wait_until mariadbd 60 mysql_ok || fail mariadbd "MariaDB does not answer on $MYSQL_SOCK"
    }
    mariadb --socket="$MYSQL_SOCK" -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db" ||
        fail mariadbd "cannot create database slurm_acct_db (root must log in through the unix socket)"
}

cgroup_mode() {  # cgroup | nocgroup, remembered in the state folder
    if [[ -s $DIR/cgroup_mode ]]; then
        cat "$DIR/cgroup_mode"
        return
    fi
    local m=nocgroup
    case $CGROUP_WANT in
        yes) m=cgroup ;;
        no) m=nocgroup ;;
        *)
            if grep -qE '^cgroup /sys/fs/cgroup/memory cgroup .*memory' /proc/mounts; then
                m=cgroup
            else
                say "NOTE: no cgroup-v1 memory controller mounted: --mem will not be enforced"
            fi
            ;;
    esac
    echo "$m" >"$DIR/cgroup_mode"
    echo "$m"
}

put() {  # file mode: write stdin to file if its content changed
    local f=$1 mode=$2 tmp
    tmp=$(mktemp "$f.XXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; fi
}

write_configs() {
    local mode memmb realmem defmem
    mode=$(cgroup_mode)
    memmb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    realmem=$((memmb * 9 / 10))
    defmem=$((realmem / NCPUS))
    # A fresh state folder with an old accounting database would reuse job ids
    # (and sacct -j N would then show an old job): continue after the last id.
    if [[ ! -s $DIR/first_job_id ]]; then
        local last=0
        if [[ ! -e $DIR/state/job_state ]]; then
            last=$(mariadb --socket="$MYSQL_SOCK" -uroot -N -B -e \
                "SELECT COALESCE(MAX(id_job),0) FROM slurm_acct_db.${CLUSTER}_job_table" 2>/dev/null || echo 0)
        fi
        echo $((${last:-0} + 1)) >"$DIR/first_job_id"
    fi
    {
        cat <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
FirstJobId=$(cat "$DIR/first_job_id")
EOF
        if [[ $mode == cgroup ]]; then
            cat <<EOF
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/linux
EOF
        else
            cat <<EOF
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
EOF
        fi
        cat <<EOF
GresTypes=gpu
AccountingStorageTRES=gres/gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$realmem Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$defmem
EOF
    } | put "$CONF" 644

    if [[ $mode == cgroup ]]; then
        put "$ETC/cgroup.conf" 644 <<EOF
$MARK
CgroupPlugin=cgroup/v1
CgroupAutomount=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no
EOF
    else  # no cgroup.conf at all without the cgroup plugins (slurmd reads it anyway)
        rm -f "$ETC/cgroup.conf"
        if [[ $(readlink /etc/slurm/cgroup.conf 2>/dev/null) == "$ETC/cgroup.conf" ]]; then
            rm -f /etc/slurm/cgroup.conf
        fi
    fi

    # two GPUs that SLURM schedules and binds (CUDA_VISIBLE_DEVICES) but that are no GPUs: slurmd counts a GPU only
    # with a device file, and /dev/null and /dev/zero serve (ConstrainDevices=no). Enough to check what a job asks
    # for and gets.
    put "$ETC/gres.conf" 644 <<EOF
$MARK
NodeName=$HOST Name=gpu File=/dev/null
NodeName=$HOST Name=gpu File=/dev/zero
EOF

    put "$ETC/slurmdbd.conf" 600 <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
EOF

    # clients (sbatch, sacct, ...) read /etc/slurm/slurm.conf: point it here
    mkdir -p /etc/slurm
    local f
    for f in slurm.conf cgroup.conf gres.conf slurmdbd.conf; do
        [[ -f $ETC/$f ]] || continue
        if [[ -e /etc/slurm/$f && ! -L /etc/slurm/$f ]] && ! grep -qF "$MARK" "/etc/slurm/$f"; then
            die "/etc/slurm/$f exists and was not written by this script; move it away first"
        fi
        ln -sfn "$ETC/$f" "/etc/slurm/$f"
    done
}

ensure_slurm_daemon() {  # name wait-secs check cmd...
    local name=$1 secs=$2 check=$3 pid
    shift 3
    if pid=$(our_pid "$name"); then
        wait_until "$name" "$secs" "$check" || fail "$name" "$name (pid $pid) does not answer"
        return 0
    fi
    pid=$(foreign_pids "$name" | head -n1)
    [[ -z $pid ]] || die "a $name not started by this script is running (pid $pid); stop it first"
    launch "$name" "$@"
    wait_until "$name" "$secs" "$check" || fail "$name" "$name did not come up within ${secs}s"
}

register_accounting() {
    if [[ -z $(sacctmgr -nP show cluster where name=$CLUSTER format=cluster 2>/dev/null) ]]; then
        sacctmgr -i add cluster $CLUSTER >/dev/null || fail slurmdbd "sacctmgr add cluster failed"
    fi
    if [[ -z $(sacctmgr -nP show account where name=$ACCOUNT format=account 2>/dev/null) ]]; then
        sacctmgr -i add account $ACCOUNT cluster=$CLUSTER description="qlbench tests" \
            organization=qlbench >/dev/null || fail slurmdbd "sacctmgr add account failed"
    fi
    local u
    for u in root ${SUDO_USER:-}; do
        if [[ -z $(sacctmgr -nP show assoc where user="$u" account=$ACCOUNT cluster=$CLUSTER \
            format=account 2>/dev/null) ]]; then
            sacctmgr -i add user "$u" account=$ACCOUNT cluster=$CLUSTER >/dev/null ||
                fail slurmdbd "sacctmgr add user $u failed"
        fi
        if [[ $(sacctmgr -nP show user "$u" format=defaultaccount 2>/dev/null) != "$ACCOUNT" ]]; then
            sacctmgr -i modify user where name="$u" set defaultaccount=$ACCOUNT >/dev/null || true
        fi
    done
}

wait_node() {
    local end=$((SECONDS + 30)) resumed=0
    while ((SECONDS < end)); do
        node_ok && return 0
        our_pid slurmd >/dev/null || return 2
        if ((!resumed && SECONDS > end - 25)) && [[ $(node_state) =~ ^(down|drain|drng|inval) ]]; then
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        sleep 0.2
    done
    warn "node state: $(node_state)"
    fail slurmd "node $HOST did not become idle"
}

job_state() { sacct -n -X -P -j "$1" -o State 2>/dev/null | head -n1 | awk '{print $1}'; }

wait_jobs() {  # ids... -> prints "id state" lines once all are final
    local end=$((SECONDS + 60)) id st done
    while ((SECONDS < end)); do
        done=1
        for id in "$@"; do
            st=$(job_state "$id")
            [[ -z $st || $st =~ ^(PENDING|RUNNING|REQUEUED|RESIZING|SUSPENDED|COMPLETING) ]] && done=0
        done
        ((done)) && break
        sleep 0.3
    done
    for id in "$@"; do echo "$id $(job_state "$id")"; done
}

# once per state folder: check that steps run and that --mem is enforced
selftest() {
    [[ -f $DIR/selftest_ok ]] && return 0
    local mode ok oom okst oomst
    mode=$(cgroup_mode)
    ok=$(sbatch --parsable -A $ACCOUNT -J qlbench-selftest -t 2 --mem=50M -D "$DIR" -o /dev/null \
        --wrap true 2>&1) || fail slurmctld "sbatch failed: $ok"
    if [[ $mode == cgroup ]]; then  # memory enforcement: only expected with cgroups
        oom=$(sbatch --parsable -A $ACCOUNT -J qlbench-selftest-oom -t 2 --mem=20M -D "$DIR" \
            -o /dev/null --wrap 'x=$(head -c 300000000 /dev/zero | tr "\0" a); echo ${#x}' 2>&1) ||
            fail slurmctld "sbatch failed: $oom"
    fi
    read -r _ okst < <(wait_jobs "$ok")
    if [[ $okst != COMPLETED ]]; then
        if [[ $mode == cgroup && $CGROUP_WANT != yes ]]; then
            say "NOTE: a trivial job ended $okst with the cgroup plugins; falling back to" \
                "ProctrackType=proctrack/linuxproc, TaskPlugin=task/none (--mem NOT enforced)"
            show_log slurmd
            echo nocgroup >"$DIR/cgroup_mode"
            return 2  # caller restarts slurmctld/slurmd
        fi
        fail slurmd "a trivial job ended $okst"
    fi
    if [[ $mode != cgroup ]]; then
        say "self-test: jobs run (no cgroups: a job over its --mem is NOT stopped)"
        touch "$DIR/selftest_ok"
        return 0
    fi
    read -r _ oomst < <(wait_jobs "$oom")
    if [[ $oomst == OUT_OF_MEMORY ]]; then
        say "self-test: jobs run; a job over its --mem ends OUT_OF_MEMORY (cgroup enforcement works)"
    else
        say "NOTE: self-test job over its --mem ended $oomst, not OUT_OF_MEMORY: memory is not enforced ($mode mode)"
    fi
    touch "$DIR/selftest_ok"
}

# returns 2 (after a note) when the cgroup plugins break slurmd or job steps
start_slurm() {
    local rc=0
    ensure_slurm_daemon slurmctld 30 ctld_ok slurmctld -D -i
    ensure_slurm_daemon slurmd 30 true slurmd -D -N "$HOST"
    wait_node || rc=$?
    if ((rc == 2)); then
        if [[ $(cgroup_mode) == cgroup && $CGROUP_WANT != yes ]]; then
            show_log slurmd
            say "NOTE: slurmd failed with the cgroup plugins; falling back to" \
                "ProctrackType=proctrack/linuxproc, TaskPlugin=task/none (--mem NOT enforced)"
            echo nocgroup >"$DIR/cgroup_mode"
            return 2
        fi
        fail slurmd "slurmd exited"
    fi
    selftest
}

stop_one() {  # name
    local name=$1 pid i
    if ! pid=$(our_pid "$name"); then
        rm -f "$PIDS/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do
        alive_as "$pid" "$name" || break
        sleep 0.1
    done
    if alive_as "$pid" "$name"; then
        warn "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PIDS/$name.pid"
    say "stopped $name (pid $pid)"
}

# ------------------------------------------------------------------ commands
cmd_start() {
    need_root
    local t0=$SECONDS
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "another local_slurm.sh holds $DIR/.lock"
    if command -v sinfo >/dev/null && healthy; then
        say "already running and healthy (cluster $CLUSTER, partition $PARTITION, account $ACCOUNT)"
        return 0
    fi
    ensure_packages
    mkdir -p "$ETC" "$PIDS" "$LOGS" "$DIR/state" "$DIR/spool" "$DIR/run"
    chmod 755 "$DIR" "$LOGS"
    ensure_munge
    ensure_mariadb
    write_configs
    ensure_slurm_daemon slurmdbd 60 dbd_ok slurmdbd -D
    register_accounting
    local rc=0
    start_slurm || rc=$?
    if ((rc == 2)); then  # cgroup trouble: restart with the no-cgroup settings
        stop_one slurmd
        stop_one slurmctld
        write_configs
        start_slurm
    fi
    wait_until slurmdbd 20 sacct_ok || fail slurmdbd "sacct does not answer"
    say "cluster $CLUSTER up in $((SECONDS - t0)) s: node $HOST ($NCPUS CPUs," \
        "$(cgroup_mode)), partition $PARTITION, account $ACCOUNT; logs in $LOGS"
}

cmd_stop() {
    need_root
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "another local_slurm.sh holds $DIR/.lock"
    if our_pid slurmctld >/dev/null && ctld_ok; then
        local ids i
        ids=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $ids ]]; then
            say "cancelling jobs: $(echo $ids)"
            scancel $ids 2>/dev/null || true
            for i in $(seq 50); do
                [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    local n
    for n in slurmd slurmctld slurmdbd mariadbd munged; do stop_one "$n"; done
    for n in "${DAEMONS[@]}"; do
        local f
        f=$(foreign_pids "$n" | tr '\n' ' ')
        [[ -z $f ]] || say "note: $n not started by this script still runs (pid $f); left alone"
    done
    say "stopped"
}

cmd_status() {
    local n pid f rc=0
    for n in "${DAEMONS[@]}"; do
        if pid=$(our_pid "$n"); then
            printf '  %-9s up (pid %s)\n' "$n" "$pid"
        elif f=$(foreign_pids "$n" | tr '\n' ' ') && [[ -n $f ]]; then
            printf '  %-9s up, not started by this script (pid %s)\n' "$n" "${f% }"
        else
            printf '  %-9s down\n' "$n"
        fi
    done
    [[ -s $DIR/cgroup_mode ]] && echo "  memory enforcement: $(cat "$DIR/cgroup_mode")"
    if command -v sinfo >/dev/null && ctld_ok; then
        timeout 10 sinfo 2>&1 || true
    else
        echo "  slurmctld does not answer (no sinfo)"
    fi
    if command -v sinfo >/dev/null && healthy; then
        say "cluster usable (partition $PARTITION, account $ACCOUNT)"
    else
        say "cluster NOT usable"
        rc=1
    fi
    return $rc
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
