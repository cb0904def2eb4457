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
#   3. meanwhile, in a second copy, runs one GPU job (`lc bench op --device cuda`, gpus: 1) on the
#      fake-GPU node: it must go to the gpu partition, fail with the CUDA message and not be retried;
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
KillWait=10
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
scontrol reconfigure >/dev/null 2>&1 || true
for _ in $(seq 60); do
    sinfo -h -N -o "%t" 2>/dev/null | grep -Eq "^(idle|mix|alloc)" && break
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
done
sinfo -N -o "%N %P %t %G" || fail "sinfo does not answer: see /var/log/slurm/"
sinfo -h -N -o "%t" | grep -Eq "^(idle|mix|alloc)" || fail "node $HOST not idle: see /var/log/slurm/slurmd.log"

echo "slurm_test: cluster up after $(( $(date +%s) - START )) s"

# --- the test preset through the SLURM profile, in a copy of the repository ----------------------
copy_repo() {  # the checkout's files (tracked and untracked, not ignored) into $1
    rm -rf "$1" && mkdir -p "$1"
    if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$1" -xf -
    else
        (cd "$REPO" && tar --exclude=./results/test --exclude=./data --exclude=./.snakemake -cf - .) | tar -C "$1" -xf -
    fi
}
SM=("$PY" -m snakemake --profile workflow/profiles/slurm --slurm-init-seconds-before-status-checks 1
    --seconds-between-status-checks 2 --latency-wait 10)

# A GPU job on the fake-GPU node, in a second copy, beside the main run's first (local) steps:
# `lc bench op` with resources.gpus.bench 1 (needs no inputs) must fail with the CUDA message,
# exit code 3, and not be retried.
GPU_COPY=$WORK/repo-gpu
copy_repo "$GPU_COPY"
(cd "$GPU_COPY" && rc=0 && timeout 300 "${SM[@]}" results/test/bench/op_speedup.csv \
    --config preset=test "resources={gpus: {bench: 1}}" > "$WORK/gpu.log" 2>&1 || rc=$?; echo "$rc" > "$WORK/gpu.rc") &
GPU_RUN=$!

COPY=$WORK/repo
copy_repo "$COPY"
cd "$COPY"
# Long enough a pretraining to cancel it midway (test preset: 6 iterations), resume.pt every 10;
# LC starts from it directly (cascade_init: irnet), and the target is Table 3 (prepare, train, evaluate,
# sweep, bench, table: 7 sbatch jobs), which fits the 8 minutes; SLURM_TEST_TARGETS=reproduce_tables
# runs the whole test preset (54 jobs, ~20 min on 2 busy cores: each job parses the workflow).
CONFIG=(preset=test "train={iterations: {pretrain: 200}, checkpoint_every: 10, cascade_init: irnet}")
read -r -a TARGETS <<< "${SLURM_TEST_TARGETS:-table3}"
RUNS=results/test/runs

run1() { timeout 420 "${SM[@]}" "${TARGETS[@]}" --config "${CONFIG[@]}" > "$WORK/run1.log" 2>&1; }
run1 & RUN1=$!
# cancel the VOC pretraining once it has written a resume.pt (iteration 10), while it still runs
JOB=""
for _ in $(seq 600); do
    if [ -s "$RUNS/voc/irnet/resume.pt" ]; then
        JOB=$(squeue -h -t R -o "%i %k" | awk '$2 ~ /^rule_train_wildcards_voc_irnet/ {print $1; exit}')
        [ -n "$JOB" ] && break
    fi
    kill -0 "$RUN1" 2>/dev/null || break
    sleep 0.5
done
[ -n "$JOB" ] || { tail -30 "$WORK/run1.log"; fail "never saw the voc/irnet training job running with its resume.pt"; }
scancel "$JOB"
echo "slurm_test: cancelled voc/irnet training, SLURM job $JOB"
rc=0; wait "$RUN1" || rc=$?
if [ "$rc" != 0 ]; then  # the cancelled job is resubmitted in the same run; if not, the rerun resumes it
    echo "slurm_test: first run exited $rc; rerunning"
    timeout 300 "${SM[@]}" "${TARGETS[@]}" --config "${CONFIG[@]}" > "$WORK/run1b.log" 2>&1 \
        || { tail -40 "$WORK/run1b.log"; fail "rerun failed"; }
fi
echo "slurm_test: pipeline done after $(( $(date +%s) - START )) s"

# every compute job went through sbatch; the cancelled training resumed
LOGS=$(ls "$WORK"/run1*.log)
n_rules=$(cat $LOGS | grep -c "^rule " || true)
n_sbatch=$(cat $LOGS | grep -c "has been submitted with SLURM jobid" || true)
echo "slurm_test: $n_rules compute jobs, $n_sbatch sbatch submissions"
[ "$n_rules" -gt 0 ] && [ "$n_rules" = "$n_sbatch" ] || fail "$n_rules compute jobs but $n_sbatch sbatch submissions"
[ -s results/test/tables/table3_speed.csv ] || fail "results/test/tables/table3_speed.csv missing"
grep -q ",exclusive" results/test/bench/table3_speed.csv || fail "bench/table3_speed.csv: node_access is not exclusive"
ATT=results/test/logs/train/voc_irnet.log.attempts
[ "$(grep -c '^=== attempt' "$ATT")" -ge 2 ] || fail "$ATT holds fewer than two attempts"
grep -E "resuming from .*resume.pt at iteration [1-9]" "$ATT" || fail "the resubmitted training did not resume ($ATT)"

# --- the report, with the same profile -------------------------------------------------------
timeout 300 "${SM[@]}" "${TARGETS[@]}" --config "${CONFIG[@]}" --report "$WORK/report.html" > "$WORK/report.log" 2>&1 \
    || { tail -20 "$WORK/report.log"; fail "snakemake --report failed"; }
[ -s "$WORK/report.html" ] || fail "no report"
echo "slurm_test: report $WORK/report.html ($(stat -c %s "$WORK/report.html") bytes)"

# --- the GPU job --------------------------------------------------------------------------------
wait "$GPU_RUN" || true
[ "$(cat "$WORK/gpu.rc")" != 0 ] || { tail -20 "$WORK/gpu.log"; fail "the GPU job succeeded on a node without CUDA"; }
GLOG=$GPU_COPY/results/test/logs/bench/op.log
grep "device 'cuda' was requested" "$GLOG" || { tail -30 "$WORK/gpu.log"; fail "no CUDA message in $GLOG"; }
grep -q -- "--device cuda" "$WORK/gpu.log" || fail "the GPU job did not run with --device cuda"
grep -q "partition 'gpu'" "$WORK/gpu.log" || fail "the GPU job did not go to the gpu partition"
n_gpu=$(grep -c "has been submitted with SLURM jobid" "$WORK/gpu.log" || true)
[ "$n_gpu" = 1 ] || fail "the failing GPU job was submitted $n_gpu times (expected once: no retry)"
echo "slurm_test: GPU job failed with the CUDA message, submitted once"

echo "slurm_test: PASSED in $(( $(date +%s) - START )) s (work dir $WORK)"
