#!/usr/bin/env bash
# Install, configure and start a one-node SLURM cluster on this host (CI and laptops, as root).
#
#   launch/slurm_local_cluster.sh          # install if needed, (re)write the config, start daemons
#   launch/slurm_local_cluster.sh stop     # stop the daemons this script started
#
# Debian 12's slurmctld/slurmd/slurm-client/munge (22.05) run here without systemd. Choices, and why:
# - SlurmUser=root: the CI runs as root, and a single user avoids spool permission fixes.
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroup v1/v2 setup in containers.
# - select/cons_tres with CR_CPU: CPUs are the only consumable; no GPUs, memory is not tracked.
# - SlurmdParameters=config_overrides: trust our CPU count even if slurmd detects another topology.
# - MinJobAge short and a fast scheduler interval so tests see final job states within seconds.
# Idempotent: rerunning restarts the daemons with a fresh config; running jobs are lost.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm-local
LOG_DIR=/var/log/slurm-local

stop_daemons() {
  # Only the daemons whose pid files this script wrote; never kill by name.
  for name in slurmd slurmctld; do
    if [ -f "$STATE_DIR/$name.pid" ]; then
      kill "$(cat "$STATE_DIR/$name.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/$name.pid"
    fi
  done
}

if [ "${1:-}" = "stop" ]; then stop_daemons; exit 0; fi

if [ "$(id -u)" != 0 ]; then echo "slurm_local_cluster.sh: must run as root" >&2; exit 1; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

HOST=$(hostname -s)
CPUS=$(nproc)
mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR"

# munge: one key shared by every daemon and client; the package creates it, make sure it exists.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --force"
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
fi

cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by launch/slurm_local_cluster.sh: a one-node cluster on $HOST.
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=10
SchedulerParameters=sched_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

stop_daemons
/usr/sbin/slurmctld -i
/usr/sbin/slurmd
for _ in $(seq 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "slurm_local_cluster.sh: one-node cluster up on $HOST ($CPUS CPUs)"
    exit 0
  fi
  sleep 1
done
echo "slurm_local_cluster.sh: slurm did not come up; see $LOG_DIR" >&2
sinfo >&2 || true
exit 1
