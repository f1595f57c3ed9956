#!/usr/bin/env bash
# Start a real Slurm cluster (slurmctld + slurmd per node + munged) on this host for tests.
# For CI: Debian 12, run as root, no systemd needed. Idempotent. Stop it with .ci/slurm/down.sh.
# Daemon PIDs go to /tmp/dtrain-slurm.pids (down.sh kills exactly those).
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

PIDFILE=/tmp/dtrain-slurm.pids
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
WAIT_S=${DTRAIN_SLURM_WAIT_S:-60}
t0=$(date +%s)
log() { echo "slurm: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "slurm: up.sh must run as root" >&2; exit 1; }

# DTRAIN_SLURM_NODES=2 (or more): that many nodes on this host, n1, n2, ..., one slurmd each (slurmd -N,
# its own Port= and %n in its spool/pid/log paths), the host's CPUs and memory split between them and
# the names resolving to 127.0.0.1 (/etc/hosts lines marked "# dtrain-slurm", removed by down.sh).
# 1 (the default): one node named after the host, with all of it.
NODES=${DTRAIN_SLURM_NODES:-1}
# The state of every node (one line when they agree): "idle" once all are.
node_state() { timeout 5 sinfo -h -N -o %T 2>/dev/null | tr -d '*~#!%$@^-' | sort -u | paste -sd, || true; }

# ---------- the config this host gets ----------
# task/affinity with TaskPluginParam=Threads binds every task to exactly its --cpus-per-task CPUs
# (sched_setaffinity, no cgroups, which a container often does not delegate; threads, not cores, so the
# count is exact on SMT hosts too), as sites that bind by default do. With task/none, or task/affinity's
# auto binding, which hands a lone task its whole step, an srun step giving its tasks one CPU each (srun
# without --cpus-per-task, Slurm >= 22.05) would go unnoticed in tests/slurm on a small CI host.
host=$(hostname -s)
cpus=$(nproc)
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
real_mem=$(( mem_total * 90 / 100 ))   # a bit below the total, or slurmd drains the node
if [ "$NODES" -le 1 ]; then
    names=("$host")
    node_lines="NodeName=${host} NodeAddr=127.0.0.1 NodeHostname=${host} CPUs=${cpus} RealMemory=${real_mem} State=UNKNOWN"
    part_nodes=$host
    slurmd_paths="SlurmdSpoolDir=/var/spool/slurmd
SlurmdPidFile=/run/slurmd.pid
SlurmdLogFile=${LOG_DIR}/slurmd.log"
else
    names=(); node_lines=""
    node_cpus=$(( cpus / NODES )); [ "$node_cpus" -ge 1 ] || node_cpus=1
    node_mem=$(( real_mem / NODES ))
    for i in $(seq "$NODES"); do
        names+=("n$i")
        node_lines+="NodeName=n$i NodeAddr=127.0.0.1 NodeHostname=${host} Port=$(( 17000 + i )) CPUs=${node_cpus} RealMemory=${node_mem} State=UNKNOWN"$'\n'
    done
    node_lines=${node_lines%$'\n'}
    part_nodes="n[1-$NODES]"
    slurmd_paths="SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log"
fi

conf=$(cat <<CONF
# Written by dtrain .ci/slurm/up.sh - test cluster of ${NODES} node(s) on one host.
ClusterName=dtrain-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Threads
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
${slurmd_paths}
SlurmctldDebug=info
SlurmdDebug=info
${node_lines}
PartitionName=debug Nodes=${part_nodes} Default=YES MaxTime=INFINITE State=UP
CONF
)

# ---------- already up? ----------
# Our daemons all alive, running this config, and the node usable (idle, or busy with jobs a caller
# left) -> nothing to do. A cluster started with another config is stopped and started again below.
if command -v sinfo >/dev/null 2>&1 && [ -s "$PIDFILE" ] \
        && [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" = "$conf" ]; then
    alive=1
    while read -r pid; do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || alive=0
    done < "$PIDFILE"
    if [ "$alive" -eq 1 ]; then
        usable=1
        for st in $(node_state | tr , ' '); do
            case "$st" in idle|mix|mixed|alloc|allocated|comp|completing) ;; *) usable=0 ;; esac
        done
        if [ "$usable" -eq 1 ] && [ -n "$(node_state)" ]; then
            log "ready (already running)"
            exit 0
        fi
    fi
fi

# ---------- install ----------
if ! command -v slurmctld >/dev/null 2>&1; then
    log "installing slurm-wlm + munge with apt-get"
    # Keep the packages' init scripts from starting daemons we would not track.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            slurm-wlm munge
    }
    rc=0
    apt_install || {
        log "apt-get install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get update && apt_install
    } || rc=$?
    [ "$added_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || { echo "slurm: apt-get install failed" >&2; exit 1; }
    log "installed after $(( $(date +%s) - t0 ))s"
fi

# ---------- stop leftovers from a previous (partial) start ----------
if [ -s "$PIDFILE" ]; then
    log "stale/partial cluster found; stopping it first"
    bash "$(dirname "$0")/down.sh" || true
fi

# ---------- munge ----------
getent passwd munge >/dev/null || useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin munge
install -d -m 0700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge
install -d -m 0755 -o munge -g munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munged_pid=""
munge_ok() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    if ! runuser -u munge -- munged 2>/tmp/dtrain-munged.err; then
        log "munged as user munge failed ($(tr '\n' ' ' </tmp/dtrain-munged.err)); starting as root with --force"
        munged --force
    fi
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { echo "slurm: munged does not work" >&2; tail -n 20 /var/log/munge/munged.log >&2 || true; exit 1; }
    munged_pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
fi
[ -n "$munged_pid" ] && echo "$munged_pid" > "$PIDFILE"   # (an already-running munged is not ours to stop)

# ---------- slurm dirs + config ----------
install -d -m 0755 -o root -g root "$CONF_DIR" /var/spool/slurmctld "$LOG_DIR"
for name in "${names[@]}"; do
    install -d -m 0755 -o root -g root "/var/spool/slurmd$([ "$NODES" -le 1 ] || echo "-$name")"
done
printf '%s\n' "$conf" > "$CONF_DIR/slurm.conf"
if [ "$NODES" -gt 1 ]; then
    # The node names must resolve (the rendezvous host is the allocation's first node). In place, not by
    # rename: a container's /etc/hosts is often a bind mount.
    for name in "${names[@]}"; do
        getent hosts "$name" >/dev/null || echo "127.0.0.1 $name  # dtrain-slurm" >> /etc/hosts
    done
fi

# ---------- start daemons ----------
rm -f /run/slurmctld.pid /run/slurmd.pid /run/slurmd-*.pid
: > "$LOG_DIR/slurmctld.log"
slurmd_log() { [ "$NODES" -le 1 ] && echo "$LOG_DIR/slurmd.log" || echo "$LOG_DIR/slurmd-$1.log"; }
slurmd_pidfile() { [ "$NODES" -le 1 ] && echo /run/slurmd.pid || echo "/run/slurmd-$1.pid"; }
for name in "${names[@]}"; do : > "$(slurmd_log "$name")"; done
show_logs() {
    echo "---- slurmctld.log (tail) ----" >&2; tail -n 30 "$LOG_DIR/slurmctld.log" >&2 || true
    for name in "${names[@]}"; do
        echo "---- $(slurmd_log "$name") (tail) ----" >&2; tail -n 30 "$(slurmd_log "$name")" >&2 || true
    done
}
wait_pidfile() {  # $1 = pid file; prints the pid once the daemon wrote it
    for _ in $(seq 100); do
        if [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then cat "$1"; return 0; fi
        sleep 0.1
    done
    return 1
}
# -c: start from a clean state (no jobs/node states left over from a previous CI cluster).
slurmctld -c || { show_logs; exit 1; }
ctld_pid=$(wait_pidfile /run/slurmctld.pid) || { echo "slurm: slurmctld did not start" >&2; show_logs; exit 1; }
echo "$ctld_pid" >> "$PIDFILE"
for name in "${names[@]}"; do
    if [ "$NODES" -le 1 ]; then slurmd || { show_logs; exit 1; }
    else slurmd -N "$name" || { show_logs; exit 1; }
    fi
    slurmd_pid=$(wait_pidfile "$(slurmd_pidfile "$name")") \
        || { echo "slurm: slurmd of node $name did not start" >&2; show_logs; exit 1; }
    echo "$slurmd_pid" >> "$PIDFILE"
done

# ---------- wait for the node ----------
resumed=0
deadline=$(( $(date +%s) + WAIT_S ))
state=""
while [ "$(date +%s)" -lt "$deadline" ]; do
    state=$(node_state)
    case "$state" in
        idle)
            if [ "$NODES" -le 1 ]; then log "ready (node ${host}, ${cpus} CPUs, ${real_mem} MB; $(( $(date +%s) - t0 ))s)"
            else log "ready (${NODES} nodes ${part_nodes} on ${host}, ${node_cpus} CPU(s) and ${node_mem} MB each; $(( $(date +%s) - t0 ))s)"
            fi
            exit 0 ;;
        *down*|*drain*|*drng*|*fail*)
            if [ "$resumed" -eq 0 ]; then
                log "node state '$state'; resuming"
                scontrol update nodename="$part_nodes" state=resume || true
                resumed=1
            fi ;;
    esac
    sleep 1
done
echo "slurm: node did not become idle within ${WAIT_S}s (last state: '${state}')" >&2
timeout 5 scontrol show node >&2 || true
show_logs
exit 1
