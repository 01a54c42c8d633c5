#!/usr/bin/env bash
# A one-machine cluster for sweeps, made of the engines a real one uses:
#   munge + slurmctld + slurmd        a one-node SLURM cluster (this machine's cores, most of its memory)
#   MariaDB + slurmdbd                SLURM's accounting (sacct: what submitit reads a job's end from)
#   PostgreSQL 15                     databases `optuna` (the sweep's study) and `mlflow` (the run store)
#   mlflow server                     the tracking server, PostgreSQL backend, proxied artifacts
#
#   deploy/local_cluster.sh up        install what is missing (apt), start what is not running
#   deploy/local_cluster.sh down      stop exactly what `up` started (by pid); data stays
#   deploy/local_cluster.sh status    what runs, one line per service; exit 1 if any is down
#   deploy/local_cluster.sh env       the exports that point a shell at it (eval "$(... env)")
#   deploy/local_cluster.sh purge     down, then delete the state directory
#
# Everything lives under one state directory ($FIDELITY_CLUSTER_DIR, default mlruns/cluster, or a
# folder in /var/tmp where PostgreSQL's user cannot reach the checkout) and
# every port is bound to 127.0.0.1 (slurmctld and slurmd cannot be bound to one address: they
# listen on all, on the ports below). Needs root, or sudo, for apt and for the daemons that
# switch users (PostgreSQL and MariaDB run as their own users, SLURM as root).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# PostgreSQL and MariaDB run as their own users: they must be able to reach the state folder.
# Under a checkout they cannot reach (say in /root, mode 700), the default is a folder in /var/tmp.
reachable() {  # every existing folder above $1 lets other users through (o+x)
  local p="$1"
  while [ "$p" != / ] && [ -n "$p" ]; do
    if [ -e "$p" ] && [ $(( 0$(stat -c %a "$p") & 1 )) -ne 1 ]; then return 1; fi
    p="$(dirname "$p")"
  done
}
if reachable "$REPO/mlruns"; then DEFAULT_STATE="$REPO/mlruns/cluster"
else DEFAULT_STATE="/var/tmp/fidelity_cluster-$(printf %s "$REPO" | cksum | cut -d' ' -f1)"; fi
STATE="${FIDELITY_CLUSTER_DIR:-$DEFAULT_STATE}"
VENV="${VENV:-$REPO/.venv}"
PG_PORT="${FIDELITY_PG_PORT:-55432}"
DB_PORT="${FIDELITY_MARIADB_PORT:-53306}"
CTLD_PORT="${FIDELITY_SLURMCTLD_PORT:-56817}"
SLURMD_PORT="${FIDELITY_SLURMD_PORT:-56818}"
DBD_PORT="${FIDELITY_SLURMDBD_PORT:-56819}"
MLFLOW_PORT="${FIDELITY_MLFLOW_PORT:-55000}"
CLUSTER=fidelity
PG_BIN=/usr/lib/postgresql/15/bin
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server postgresql-15)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

say() { printf 'local_cluster: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# -- pids: a service is "ours" when its pid file names a live process running the expected binary
pid_of() { [ -s "$1" ] && head -n1 "$1" | tr -dc 0-9 || true; }
alive() {   # alive PIDFILE NAME
  local pid; pid="$(pid_of "$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up in ${limit}s (logs: $STATE/log)"
}

install_missing() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt)"
  # the packages' own services are not started: this script starts its own, under $STATE
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
    { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }; } ||
    { $SUDO rm -f /usr/sbin/policy-rc.d; die "apt-get install ${missing[*]} failed"; }
  $SUDO rm -f /usr/sbin/policy-rc.d
}

secret() {  # a password kept in the state dir, made once
  local f="$STATE/secrets/$1"
  [ -s "$f" ] || { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$f"; chmod 600 "$f"; }
  cat "$f"
}

# -- munge ---------------------------------------------------------------------------------
munge_up() {
  alive "$STATE/run/munged.pid" munged && return 0
  mkdir -p "$STATE/munge" && chmod 700 "$STATE/munge"
  [ -s "$STATE/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$STATE/munge/munge.key"; chmod 400 "$STATE/munge/munge.key"; }
  $SUDO munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
  wait_for 10 munged test -S "$STATE/munge/munge.socket"
}

# -- MariaDB and slurmdbd (accounting) -------------------------------------------------------
mariadb_up() {
  alive "$STATE/run/mariadb.pid" mariadbd && return 0
  local data="$STATE/mariadb"
  if [ ! -d "$data/mysql" ]; then
    mkdir -p "$data" && chown mysql:mysql "$data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
      > "$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
  fi
  # started in the background by this shell: mariadbd runs as mysql and writes its own pid file
  (setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$STATE/run/mariadb.sock" \
     --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$STATE/run/mariadb.pid" \
     --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &)
  wait_for 60 MariaDB mariadb --no-defaults -S "$STATE/run/mariadb.sock" -u root -e "select 1"
  local pw; pw="$(secret slurmdbd)"
  mariadb --no-defaults -S "$STATE/run/mariadb.sock" -u root -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

write_slurm_conf() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 85 / 100 ))   # MB; the rest for the OS
  mkdir -p "$STATE/slurm/ctld" "$STATE/slurm/d"
  cat > "$STATE/slurm/slurm.conf" <<EOF
# written by deploy/local_cluster.sh: a one-node cluster on $host
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/slurm/ctld
SlurmdSpoolDir=$STATE/slurm/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$STATE/munge/munge.socket   # the munge socket for slurmdbd connections
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$STATE/slurm/slurmdbd.conf" <<EOF
# written by deploy/local_cluster.sh
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(secret slurmdbd)
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/slurm/slurmdbd.conf"
}

slurm_up() {
  export SLURM_CONF="$STATE/slurm/slurm.conf"
  write_slurm_conf
  if ! alive "$STATE/run/slurmdbd.pid" slurmdbd; then
    $SUDO env SLURM_CONF="$SLURM_CONF" slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -i -n list cluster format=cluster | grep -qw "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  if ! alive "$STATE/run/slurmctld.pid" slurmctld; then
    $SUDO env SLURM_CONF="$SLURM_CONF" slurmctld
    wait_for 30 slurmctld scontrol ping
  fi
  if ! alive "$STATE/run/slurmd.pid" slurmd; then
    $SUDO env SLURM_CONF="$SLURM_CONF" slurmd
  fi
  wait_for 60 "the SLURM node" sh -c "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'"
}

# -- PostgreSQL ------------------------------------------------------------------------------
psql_admin() { runuser -u postgres -- "$PG_BIN/psql" -h "$STATE/run" -p "$PG_PORT" -U postgres -qAt "$@"; }
postgres_up() {
  local data="$STATE/postgres"
  if ! alive "$data/postmaster.pid" postgres; then
    if [ ! -s "$data/PG_VERSION" ]; then
      mkdir -p "$data" && chown postgres:postgres "$data" && chmod 700 "$data"
      runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 > "$STATE/log/initdb.log" 2>&1 || die "initdb failed (see $STATE/log/initdb.log)"
    fi
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -w -t 60 -l "$STATE/log/postgres.log" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STATE/run" start >/dev/null ||
      die "PostgreSQL did not start (see $STATE/log/postgres.log)"
  fi
  local pw; pw="$(secret postgres)"
  psql_admin -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='fidelity')
                 THEN CREATE ROLE fidelity LOGIN PASSWORD '$pw'; END IF; END \$\$;" >/dev/null
  for db in optuna mlflow; do
    [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$db'")" = 1 ] ||
      psql_admin -c "CREATE DATABASE $db OWNER fidelity" >/dev/null
  done
}
postgres_url() { echo "postgresql+psycopg2://fidelity:$(secret postgres)@127.0.0.1:$PG_PORT/$1"; }

# -- the MLflow tracking server -------------------------------------------------------------------
mlflow_up() {
  alive "$STATE/run/mlflow.pid" "mlflow\|python" && return 0
  [ -x "$VENV/bin/mlflow" ] || die "no $VENV/bin/mlflow: run \`make setup\` first"
  "$VENV/bin/python" -c "import psycopg2" 2>/dev/null || die "psycopg2 is missing from $VENV: run \`make setup\`"
  mkdir -p "$STATE/mlflow-artifacts"
  (setsid "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 \
     --backend-store-uri "$(postgres_url mlflow)" --serve-artifacts \
     --artifacts-destination "$STATE/mlflow-artifacts" </dev/null >"$STATE/log/mlflow.log" 2>&1 &
   echo $! > "$STATE/run/mlflow.pid")
  wait_for 120 "the MLflow server" "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"
}

env_lines() {
  cat <<EOF
export SLURM_CONF=$STATE/slurm/slurm.conf
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export FIDELITY_OPTUNA_STORAGE=$(postgres_url optuna)
export FIDELITY_CLUSTER_DIR=$STATE
EOF
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (the daemons switch users; apt installs)"
  install_missing
  mkdir -p "$STATE/run" "$STATE/log" "$STATE/secrets"
  chmod 755 "$STATE" "$STATE/run" && chmod 700 "$STATE/secrets"
  chmod 1777 "$STATE/run" "$STATE/log"   # PostgreSQL (as postgres) and MariaDB (as mysql) write here too
  munge_up
  mariadb_up
  slurm_up
  postgres_up
  mlflow_up
  env_lines > "$STATE/env.sh"
  say "up ($STATE); in a shell: eval \"\$(deploy/local_cluster.sh env)\""
}

stop_pid() {  # stop_pid PIDFILE NAME [LABEL]
  alive "$1" "$2" || return 0
  local pid; pid="$(pid_of "$1")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { say "$2 ($pid) ignored SIGTERM for 30s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  say "stopped ${3:-$2} ($pid)"
}

down() {
  [ -d "$STATE/run" ] || { say "nothing to stop ($STATE)"; return 0; }
  stop_pid "$STATE/run/mlflow.pid" "mlflow\|python" "the MLflow server"
  pkill -TERM -P "$(pid_of "$STATE/run/mlflow.pid")" 2>/dev/null || true
  if alive "$STATE/postgres/postmaster.pid" postgres; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE/postgres" -m fast -w stop >/dev/null && say "stopped PostgreSQL"
  fi
  stop_pid "$STATE/run/slurmd.pid" slurmd
  stop_pid "$STATE/run/slurmctld.pid" slurmctld
  stop_pid "$STATE/run/slurmdbd.pid" slurmdbd
  stop_pid "$STATE/run/mariadb.pid" mariadbd
  stop_pid "$STATE/run/munged.pid" munged
}

status() {
  local bad=0 line
  for line in "munged:$STATE/run/munged.pid:munged" "mariadbd:$STATE/run/mariadb.pid:mariadbd" \
              "slurmdbd:$STATE/run/slurmdbd.pid:slurmdbd" "slurmctld:$STATE/run/slurmctld.pid:slurmctld" \
              "slurmd:$STATE/run/slurmd.pid:slurmd" "postgres:$STATE/postgres/postmaster.pid:postgres" \
              "mlflow:$STATE/run/mlflow.pid:mlflow\|python"; do
    IFS=: read -r name file comm <<<"$line"
    if alive "$file" "$comm"; then echo "$name running (pid $(pid_of "$file"))"; else echo "$name stopped"; bad=1; fi
  done
  return $bad
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) [ -s "$STATE/env.sh" ] || die "not up yet: deploy/local_cluster.sh up"; cat "$STATE/env.sh" ;;
  purge) down; rm -rf "$STATE"; say "removed $STATE" ;;
  *) echo "usage: $0 up|down|status|env|purge" >&2; exit 2 ;;
esac
