#!/usr/bin/env bash
# Stop the test Slurm cluster started by .ci/slurm/up.sh.
# 1. cancels the jobs still in the cluster (so no slurmstepd / job process outlives the daemons),
# 2. kills exactly the daemon PIDs in /tmp/dtrain-slurm.pids (TERM, up to 10 s, then KILL).
# Always exits 0.
set -uo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
PIDFILE=/tmp/dtrain-slurm.pids
# The node names up.sh added (2-node mode); rewritten in place, /etc/hosts may be a bind mount.
forget_node_names() {
    if grep -q '# dtrain-slurm$' /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -v '# dtrain-slurm$' /etc/hosts)
        printf '%s\n' "$kept" > /etc/hosts
    fi
}
[ -f "$PIDFILE" ] || { forget_node_names; echo "slurm: nothing to stop"; exit 0; }

pids=()
while read -r pid; do
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && pids+=("$pid")
done < "$PIDFILE"

# ---- cancel leftover jobs while slurmctld/slurmd are still up ----
jobs=""
if [ "${#pids[@]}" -gt 0 ] && command -v squeue >/dev/null 2>&1; then
    jobs=$(timeout 5 squeue -h -o %i 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')
fi
if [ -n "$jobs" ]; then
    echo "slurm: cancelling leftover jobs: $jobs"
    timeout 10 scancel --full $jobs 2>/dev/null || true
    for _ in $(seq 40); do   # up to 20 s (KillWait=10)
        [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING,CONFIGURING,SUSPENDED -o %i 2>/dev/null)" ] && break
        sleep 0.5
    done
    # Whatever job process is still there: KILL exactly those PIDs (slurmd knows them).
    left=$(timeout 5 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}')
    if [ -n "$left" ]; then
        echo "slurm: killing leftover job processes: $(echo $left)"
        kill -KILL $left 2>/dev/null || true
        sleep 1
    fi
fi

# ---- stop the daemons ----
alive() { local out=() p; for p in "$@"; do kill -0 "$p" 2>/dev/null && out+=("$p"); done; echo "${out[*]:-}"; }
if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do   # up to 10 s
        [ -z "$(alive "${pids[@]}")" ] && break
        sleep 0.1
    done
    left=$(alive "${pids[@]}")
    if [ -n "$left" ]; then
        echo "slurm: killing $left with KILL"
        kill -KILL $left 2>/dev/null || true
    fi
fi
rm -f "$PIDFILE"
forget_node_names
echo "slurm: stopped"
exit 0
