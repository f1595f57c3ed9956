#!/usr/bin/env bash
# The one-GPU device check: one script, one call, its results in one file.
#
#   bash benchmarks/gpu_check.sh          with a GPU: dtrain env, the gpu-marked tests, every recipe x
#                                         {ddp, fsdp, ZeRO-2, ZeRO-3} x {bf16, fp16} x compile {off, on} in a
#                                         real NCCL group, and a bitwise resume check of each strategy.
#                                         Result: benchmarks/results/gpu_check_<gpu>_<date>.md (and in $OUT).
#   bash benchmarks/gpu_check.sh --dry    CPU rehearsal (CI runs it): gloo, bf16, compile off; result in
#                                         $GPU_CHECK_OUT (default: a temporary directory).
#
# On the lent device machine nothing can be installed from the network: DeepSpeed and its two missing
# dependencies travel as wheels in .whl/ (benchmarks/gpu_wheels.sh builds them here), installed below.
# Budget: about 8 minutes on one H200 with 16 cores (GPU_CHECK_BUDGET_S, 480): training runs past 330 s
# are skipped and say so; what is left times the mlp step against the raw loop and the peers
# (benchmarks/step_time.py, its own report beside this one). Exit code: 0 when nothing failed.
# GPU_CHECK_PARTS (tests,runs,steps): a second call in the same lease repeats only the parts a fix touched,
# and then the training runs get the whole budget.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
PY=${PYTHON:-python3}
PARTS=${GPU_CHECK_PARTS:-tests,runs,steps}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
# cuBLAS reads its workspace setting once, at its first call: set here for the deterministic resume checks.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}

if [ "$DRY" -eq 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$DRY" -eq 1 ]; then
    dest=${GPU_CHECK_OUT:-$work/result}
else
    gpu=$($PY -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null) \
        || { echo "gpu_check: no CUDA GPU here; run with --dry for the CPU rehearsal" >&2; exit 2; }
    dest=benchmarks/results
fi
mkdir -p "$dest"
slug=$(echo "${gpu:-cpu-dry}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
file="$dest/gpu_check_${slug}_$(date +%F).md"
start=$(date +%s)

{
    echo "# dtrain GPU check: ${gpu:-dry run on the CPU}, $(date -u '+%F %H:%M UTC')"
    echo
    echo '## dtrain env'
    echo '```'
    $PY -m dtrain.cli env 2>&1
    echo '```'
} > "$file"

rc=0
if [ "$DRY" -eq 0 ] && part tests; then
    echo "gpu_check: gpu-marked tests"
    { echo; echo '## gpu-marked tests'; echo '```'; } >> "$file"
    timeout 240 $PY -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -n 25 >> "$file"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    echo '```' >> "$file"
fi

total=${GPU_CHECK_BUDGET_S:-480}
if part runs; then
    echo "gpu_check: training runs"
    share=$(part steps && [ "$DRY" -eq 0 ] && echo 330 || echo 480)
    budget=$(( total * share / 480 - ($(date +%s) - start) ))
    GPU_CHECK_BUDGET_S=$budget $PY -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/gpu_check.py \
        --out "$work/runs" $([ "$DRY" -eq 1 ] && echo --dry) ${GPU_CHECK_ONLY:+--only "$GPU_CHECK_ONLY"} \
        > "$work/runs.log" 2>&1 || rc=1
    { echo; cat "$work/runs/gpu_check.md" 2>/dev/null || { echo "## training runs: no report"; echo '```'; tail -n 40 "$work/runs.log"; echo '```'; }; } >> "$file"
    [ -f "$work/runs/gpu_check.json" ] && cp "$work/runs/gpu_check.json" "${file%.md}.json"
fi

if [ "$DRY" -eq 0 ] && part steps; then
    left=$(( total - ($(date +%s) - start) ))
    if [ "$left" -gt 90 ]; then
        echo "gpu_check: step time vs the raw loop and the peers, ${left}s left"
        steps_md="$dest/step_time_${slug}_$(date +%F).md"
        # The vision recipe's images/s against the peers where Fashion-MNIST's IDX files came along (carry
        # .fmnist: a copy of /usr/share/datasets/fashion-mnist), else the overhead-bound mlp.
        workload=mlp
        [ -d .fmnist ] && { export FASHION_MNIST_DIR=$PWD/.fmnist; workload=vision; }
        timeout "$left" $PY benchmarks/step_time.py --workload $workload --nproc 1 --rounds 5 --budget-s $(( left - 45 )) \
            --out "$steps_md" > "$work/step_time.log" 2>&1 || rc=1
        { echo; echo "## Step time (benchmarks/step_time.py, $workload)"; cat "$steps_md" 2>/dev/null || tail -n 30 "$work/step_time.log"; } >> "$file"
        [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$steps_md" "$OUT/" 2>/dev/null
    else
        echo >> "$file"; echo "Step time: skipped, ${left}s left of the budget." >> "$file"
    fi
fi
echo >> "$file"
echo "Whole check: $(( $(date +%s) - start )) s, exit $rc." >> "$file"

[ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$file" "${file%.md}.json" "$work/runs.log" "$OUT/" 2>/dev/null
echo "gpu_check: wrote $file (exit $rc)"
grep -E '^[0-9]+ passed' "$file" || true
exit $rc
