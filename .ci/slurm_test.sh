#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, and the test preset run through the SLURM profile.
#
#   .ci/slurm_test.sh            (root, Debian/apt; the project's venv python first on PATH)
#
# Installs slurm-wlm and munge from Debian's packages, writes a one-node slurm.conf (partitions cpu
# and gpu, a fake GPU: Gres=gpu:1 backed by /dev/null), starts munged, slurmctld and slurmd without
# systemd, then in a copy of the repository:
#   1. runs the test preset through workflow/profiles/slurm (status polled with squeue: no slurmdbd),
#      cancelling one training job with scancel on the way: Snakemake resubmits it and the log of
#      the new attempt says "resuming from";
#   2. asserts every job went through sbatch and the run finished;
#   3. runs one GPU job (evaluate with --device cuda, gpus: 1) on the fake-GPU node: it must fail
#      with the CUDA message, exit code 3, and not be retried;
#   4. builds the report with the same profile.
# Skipped (exit 0, with a message) where the machine is not root or has no apt-get.
set -euo pipefail

skip() { echo "slurm_test: SKIPPED: $*"; exit 0; }
fail() { echo "slurm_test: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || skip "not root (installing SLURM and starting its daemons needs root)"
command -v apt-get >/dev/null || skip "no apt-get (Debian's slurm-wlm and munge packages are needed)"

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$(command -v python3)
START=$(date +%s)
WORK=${SLURM_TEST_DIR:-$(mktemp -d /tmp/lc_slurm_test.XXXXXX)}
echo "slurm_test: python $PY, work dir $WORK"

# --- SLURM and munge ------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || skip "apt-get update failed (no package mirror reachable)"
    apt-get install -y -qq slurm-wlm munge >/dev/null || skip "apt-get install slurm-wlm munge failed"
fi
"$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || "$PY" -m pip install -q snakemake-executor-plugin-slurm \
    || fail "snakemake-executor-plugin-slurm is not installed and pip could not install it"

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
chown slurm: /var/spool/slurmctld /var/log/slurm
chown munge: /run/munge /var/lib/munge /var/log/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key

cat > /etc/slurm/slurm.conf <<EOF
ClusterName=lctest
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
KillWait=30
SchedulerParameters=defer_batch
GresTypes=gpu
ReturnToService=2
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# a fake GPU: the node advertises one (or it goes INVAL), CUDA finds none
echo "NodeName=$HOST Name=gpu File=/dev/null" > /etc/slurm/gres.conf

start_daemons() {
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged --force"
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -i
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
}
start_daemons
for _ in $(seq 60); do
    sinfo -h -N -o "%t" 2>/dev/null | grep -Eq "^(idle|mix|alloc)" && break
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
sinfo -N -o "%N %P %t %G" || fail "sinfo does not answer: see /var/log/slurm/"
sinfo -h -N -o "%t" | grep -Eq "^(idle|mix|alloc)" || fail "node $HOST not idle: see /var/log/slurm/slurmd.log"
