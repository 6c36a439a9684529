#!/usr/bin/env bash
# The whole GPU run in one command, on the lent GPU machine, from the repository root with the carry (.gpu,
# built by benchmarks/gpu/make_carry.sh) beside the tree: install the carried wheels, print the card, build
# DeepSpeed's CPU Adam in the background (the 7b row's offloaded optimizer), then the benchmark in value order:
# matmul peak, padded baseline, sdpa/chunked (through Ray Train + DeepSpeed, early, so the mission's path is
# proven even if later rows run short), flex_attention/chunked, flex_attention/liger, the rest while time
# allows, the 7B-shaped ZeRO-3 offload row (its time held back). Results land under $OUT after every row: results.json, results.md (the table), results.log
# (every measurement's output), run.log (this script's), nvidia-smi.txt, cpu_adam_build.log.
# It ends within DEADLINE_S seconds (default 470) of its start.
#   bash benchmarks/gpu/run.sh [extra gpu_train.py run arguments]
# Env: OUT (default /tmp/gpu-out), PY (python3), SITE (/tmp/site), SIZE (1b; tiny for the CPU proof),
#      CARRY (.gpu), WORK (/tmp/gpu-bench: the data is copied there, the rows write there),
#      RAY_ROWS (sdpa/chunked), DEADLINE_S (470).
set -uo pipefail
START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-470}
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
SIZE=${SIZE:-1b}
CARRY=${CARRY:-.gpu}
WORK=${WORK:-/tmp/gpu-bench}
RAY_ROWS=${RAY_ROWS:-sdpa/chunked}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions

echo "== $(date -u +%FT%TZ) $(uname -n) python: $("$PY" --version 2>&1)"
if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"; fi
rm -rf "$SITE" "$WORK"
mkdir -p "$WORK"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$CARRY"/*.whl ||
  { echo "FAILED: installing the carried wheels"; exit 1; }
export PYTHONPATH="$SITE:$PWD/platform"
cp -r "$CARRY/data" "$WORK/data"
echo "== installed in $(($(date +%s) - START)) s"
"$PY" - <<'PY' || { echo "FAILED: an import the benchmark needs"; exit 1; }
import importlib, torch, transformers
mods = ["ray", "ray.train.torch", "deepspeed", "pydantic", "agentflan.train.loop", "liger_kernel"]
versions = {m: getattr(importlib.import_module(m), "__version__", "") for m in mods}
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, versions)
PY

# DeepSpeed's CPU Adam (C++, JIT) for the 7b row, built while the 1B rows run; gpu_train.py falls back to
# torch's AdamW for the offloaded weights if it fails or is not ready in time.
STATUS=$WORK/cpu_adam.status
(nice -n 19 "$PY" -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()" \
  >"$OUT/cpu_adam_build.log" 2>&1 && echo ok >"$STATUS" || echo failed >"$STATUS") &

timeout -k 10 $(($(left) - 5)) "$PY" benchmarks/gpu_train.py run "$WORK/data" --size "$SIZE" \
  --ray-rows "$RAY_ROWS" --budget-s $(($(left) - 20)) --cpu-adam-status "$STATUS" \
  --out "$OUT/results.json" --log "$OUT/results.log" "$@"
code=$?
# a file over 16 MiB would not come back at all: keep the end of the measurements' log
if [ -f "$OUT/results.log" ] && [ "$(stat -c %s "$OUT/results.log")" -gt 15000000 ]; then
  tail -c 15000000 "$OUT/results.log" >"$WORK/results.log" && mv "$WORK/results.log" "$OUT/results.log"
fi
echo "== gpu_train.py exit $code, $(($(date +%s) - START)) s since start"
