#!/usr/bin/env bash
# Build the carry for the lent GPU machine: one folder (default .gpu, git-ignored) holding the wheels that the
# machine's python3 (3.12, torch 2.11, transformers 5.17, no ray/deepspeed/pydantic) lacks for this benchmark,
# and the prepared data (tokenizer + packed rows). It travels with the working tree in one call, whose limit
# (64 MiB) the tracked files share: this script fails above CARRY_MAX_MIB (default 52).
# Usage, from the repository root:  bash benchmarks/gpu/make_carry.sh [OUTDIR]
#   PY=...  the python with this project's dependencies, to prepare the data (default: .venv/bin/python or
#           /work/main/.venv/bin/python or python3)
set -euo pipefail
OUT=${1:-.gpu}
MAX_MIB=${CARRY_MAX_MIB:-52}
RAY=2.60.0
DEEPSPEED=0.19.8
for candidate in "${PY:-}" .venv/bin/python /work/main/.venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null; then PY=$candidate; break; fi
done
rm -rf "$OUT"
mkdir -p "$OUT/tmp"
dl() {  # cp312 manylinux x86_64 wheels, none of their dependencies (each one named here on purpose)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$@"
}
# ray without Java (jars), RLlib, Serve, LLM and the dashboard's web page; its ELF files stripped
dl "$OUT/tmp" "ray==$RAY"
"$PY" benchmarks/gpu/slim_wheel.py "$OUT"/tmp/ray-$RAY-*.whl "$OUT" \
  --drop ray/jars --drop ray/rllib --drop ray/serve --drop ray/llm --drop ray/dashboard/client
# what agentflan.config, deepspeed and ray import at run time that the GPU machine does not have
# (pydantic: the config and deepspeed; hjson: deepspeed's config; jsonschema: ray's runtime-env checks)
dl "$OUT" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
  typing-extensions==4.16.0 liger-kernel==0.8.5
# deepspeed is source-only on PyPI: its wheel is pure Python, its ops JIT-compile where they are used
"$PY" -m pip wheel -q --no-deps -w "$OUT" "deepspeed==$DEEPSPEED"
rm -rf "$OUT/tmp"
# the prepared data: corpus (the 7b row re-packs it at 4096), 32k BPE tokenizer, rows packed to 8192
PYTHONPATH="$PWD/platform" "$PY" benchmarks/gpu_train.py prepare "$OUT/data" --seq-len 8192 --vocab 32000
rm -rf "$OUT/data/decomposed" "$OUT/data/filtered" "$OUT/data/quarantine"
ls -la "$OUT"
du -sh "$OUT"
size=$(du -sm "$OUT" | cut -f1)
if [ "$size" -gt "$MAX_MIB" ]; then echo "carry is $size MiB, over $MAX_MIB MiB" >&2; exit 1; fi
