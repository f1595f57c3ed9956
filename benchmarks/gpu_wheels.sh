#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on the lent GPU machine, which has torch, transformers and
# most of DeepSpeed's needs but no network: DeepSpeed itself (built here from its source package, no ops
# compiled ahead) and the dependencies that image lacks, for CPython 3.12 on x86-64. Run here, once per
# session, then name .whl in the device call's carry (it stays out of git through .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exclude=$(git rev-parse --git-common-dir)/info/exclude
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
rm -rf .whl && mkdir -p .whl
ds=$($PY -c "import importlib.metadata as m; print(m.version('deepspeed'))")
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$ds"
pins=$($PY -c "import importlib.metadata as m
print(' '.join(f'{n}=={m.version(n)}' for n in ('hjson', 'pydantic', 'pydantic-core', 'annotated-types', 'typing-inspection')))")
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
ls -la .whl
du -sh .whl
