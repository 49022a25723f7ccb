#!/usr/bin/env bash
# A real single-machine SLURM cluster on loopback, for the jobs/ tests and for trying the scripts by
# hand: its own munged (generated key), slurmctld and slurmd, all state, logs and sockets in DIR.
#
#   tests/slurm/cluster.sh start DIR   starts the daemons, waits until the node is idle, and writes
#                                      DIR/env.sh (source it: SLURM_CONF, PATH-independent)
#   tests/slurm/cluster.sh stop DIR    stops exactly the daemons started in DIR (by their pid files)
#
# Environment: SLURM_TEST_PARTITION (default "debug"), SLURM_TEST_START_TIMEOUT (seconds, 60),
#   SLURM_TEST_GPUS (default 0): declare that many GPUs as GRES on the node, so that --gpus-per-node
#   jobs and CUDA_VISIBLE_DEVICES binding can be tried. They are /dev/nvidia0.. when those exist;
#   otherwise placeholder character devices (/dev/null, /dev/zero, ...; at most 4), which lets SLURM
#   allocate and bind "GPUs" on a machine without any, for testing the job scripts' binding logic.
# Exit codes: 0 ok, 77 when the SLURM or munge binaries are absent, 1 on any other failure.
# Runs as root (CI) or as a user; binds to 127.0.0.1 on two free high ports; touches nothing of a
# system SLURM or munge that may also be running.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() { sed -n '2,13p' "$0" >&2; exit 2; }

[[ $# -eq 2 ]] || usage
action=$1
dir=$2

# The daemons live in /usr/sbin on Debian, which is not on a user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

have_binaries() {
  local b
  for b in munged slurmctld slurmd sbatch srun squeue scontrol sinfo; do
    command -v "$b" >/dev/null 2>&1 || { echo "cluster.sh: $b not found" >&2; return 1; }
  done
}

# Sends TERM to the process in a pid file, then KILL after a grace period; only that pid.
stop_pidfile() {
  local pidfile=$1 name=$2 pid i
  [[ -s "$pidfile" ]] || return 0
  pid=$(<"$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  # A stale pid file may name a pid reused by an unrelated process: check the command name first.
  if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

free_port() {
  # A random port in 20000..39999 that nothing listens on (other engineers may run clusters too).
  local p i
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Htan 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found"
}

start() {
  have_binaries || exit 77
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # munged refuses group- or world-writable directories on its paths, and wants execute permission
  # for all on the socket's directory (any user's job must reach it): 0711 gives exactly that.
  chmod 0711 "$dir"
  mkdir -p "$dir"/{munge,state,spool,log,run}
  local up=$dir
  while [[ "$up" != / ]]; do
    up=$(dirname "$up")
    [[ $(( 0$(stat -c %a "$up") & 01 )) -ne 0 ]] \
      || die "$up is not searchable by all (chmod o+x), which munged needs above its socket"
  done
  chmod 0711 "$dir"/munge

  # --- munge with a generated key --------------------------------------------------------------
  local key=$dir/munge/munge.key sock=$dir/munge/munge.socket
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$key" --force >/dev/null
  else
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
  fi
  chmod 0400 "$key"
  munged --socket="$sock" --key-file="$key" --pid-file="$dir/munge/munged.pid" \
         --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" \
    || die "munged failed to start; see $dir/log/munged.log"
  munge --socket="$sock" -n </dev/null | unmunge --socket="$sock" >/dev/null \
    || die "munge round trip failed; see $dir/log/munged.log"

  # --- slurm.conf -------------------------------------------------------------------------------
  local cpus sockets cores threads mem ctld_port slurmd_port user partition
  partition=${SLURM_TEST_PARTITION:-debug}
  # slurmd -C reports this machine's hardware as slurmd will see it; a mismatch drains the node.
  local hw
  hw=$(slurmd -C 2>/dev/null | head -1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  sockets=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
  cores=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
  threads=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  [[ -n "$cpus" && -n "$mem" ]] || die "slurmd -C gave no hardware description: $hw"
  # Leave some memory headroom so that a transient reading below the configured value does not
  # drain the node.
  mem=$(( mem * 9 / 10 ))
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  [[ "$ctld_port" != "$slurmd_port" ]] || slurmd_port=$((ctld_port + 1))
  user=$(id -un)

  local gpus=${SLURM_TEST_GPUS:-0} gres_line="" node_gres="" i
  : >"$dir/gres.conf"
  if (( gpus > 0 )); then
    local placeholders=(/dev/null /dev/zero /dev/full /dev/urandom)
    for ((i = 0; i < gpus; i++)); do
      if [[ -c /dev/nvidia$i ]]; then
        echo "NodeName=localhost Name=gpu File=/dev/nvidia$i" >>"$dir/gres.conf"
      else
        (( i < ${#placeholders[@]} )) || die "SLURM_TEST_GPUS=$gpus: only ${#placeholders[@]} placeholder devices"
        echo "NodeName=localhost Name=gpu File=${placeholders[$i]}" >>"$dir/gres.conf"
      fi
    done
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$gpus"
  fi

  cat >"$dir/slurm.conf" <<EOF
# Generated by tests/slurm/cluster.sh: a one-node cluster on loopback.
ClusterName=racesp-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers and CI: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
# No slurmdbd here, so no sacct: job states stay queryable with scontrol for an hour, and every
# finished job is also written to a plain-text job completion log.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MinJobAge=3600
# Reject at submission a job this node can never run, instead of leaving it pending forever.
EnforcePartLimits=ALL
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$gres_line
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=$partition Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

  cat >"$dir/env.sh" <<EOF
# Source this to talk to the test cluster in $dir.
export SLURM_CONF=$dir/slurm.conf
export PATH="\$PATH:/usr/sbin:/sbin"
EOF
  export SLURM_CONF=$dir/slurm.conf

  # --- daemons ----------------------------------------------------------------------------------
  slurmctld -f "$SLURM_CONF" -i || die "slurmctld failed to start; see $dir/log/slurmctld.log"
  slurmd -f "$SLURM_CONF" -N localhost || die "slurmd failed to start; see $dir/log/slurmd.log"

  local deadline=$((SECONDS + ${SLURM_TEST_START_TIMEOUT:-60})) state=""
  while (( SECONDS < deadline )); do
    state=$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -1 || true)
    [[ "$state" == idle ]] && break
    sleep 1
  done
  if [[ "$state" != idle ]]; then
    echo "cluster.sh: node not idle after ${SLURM_TEST_START_TIMEOUT:-60}s (state '$state')" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 2>/dev/null || true
    exit 1
  fi
  echo "cluster.sh: up in $dir (slurmctld :$ctld_port, slurmd :$slurmd_port, $cpus CPUs)" >&2
}

stop() {
  [[ -d "$dir" ]] || return 0
  # Cancel what is still queued or running here (every job of this private cluster is ours), so
  # that no job step outlives its slurmd.
  if [[ -f "$dir/slurm.conf" && -s "$dir/run/slurmctld.pid" ]]; then
    export SLURM_CONF=$dir/slurm.conf
    local jobs i
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [[ -n "$jobs" ]]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for i in $(seq 1 20); do
        [[ -z "$(timeout 10 squeue -h -o %A 2>/dev/null || true)" ]] && break
        sleep 0.5
      done
    fi
  fi
  # slurmd first, so that it does not keep retrying a controller that is gone.
  stop_pidfile "$dir/run/slurmd.pid" slurmd
  stop_pidfile "$dir/run/slurmctld.pid" slurmctld
  stop_pidfile "$dir/munge/munged.pid" munged
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
