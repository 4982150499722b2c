#!/usr/bin/env bash
# GPU check, meant to finish in under 5 minutes on one GPU (NOT YET RUN ON A GPU: no GPU was lent to this work).
#  1. bench_models.py in bf16 autocast, batch 128 (the paper's Table 1: ConViT-Ti ran at 0.51 of DeiT-Ti,
#     S at 0.52, B at 0.75), ConViT-Ti/S/B at 224 and 384, eager (with timm's ConVit) and compiled (ours and
#     the ViT only, no memory figure: compiling dominates the time);
#  2. 50 training steps of train.py (torchrun, NCCL, one GPU) on a generated ImageFolder;
#  3. with TIMM_SCRIPTS set, benchmarks/bench_epoch.py on the GPU (ours beside timm's scripts).
# Every step has its own time limit (25 s eager, 30 s compiled, 75 s training: at most about 7 minutes in
# all, typically less) and a failed step does not stop the others; the summary says which failed.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default out/gpu_check; JSON and logs land there)
set -u
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
FAILED=()

step() {  # step NAME SECONDS COMMAND...: runs it under a time limit, keeps its log, notes a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 8 "$OUT/$name.log"
    if [ "$rc" -ne 0 ]; then
        echo "   $name failed (exit $rc, 124 = time limit)"
        FAILED+=("$name")
    fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv || true

for model in convit_tiny convit_small convit_base; do
    for size in 224 384; do
        timm=()  # timm's ConVit materialises B x H x N x N tensors: at 384 it is left out (time, memory)
        [ "$size" -eq 384 ] && timm=(--no-timm)
        step "eager_${model}_${size}" 25 "$PY" benchmarks/bench_models.py --device cuda --model "$model" \
            --img-size "$size" --batch 128 --repeats 7 --warmup 2 "${timm[@]}" --json "$OUT/eager_${model}_${size}.json"
    done
done
for model in convit_tiny convit_small convit_base; do
    for size in 224 384; do
        step "compiled_${model}_${size}" 30 "$PY" benchmarks/bench_models.py --device cuda --model "$model" \
            --img-size "$size" --batch 128 --repeats 7 --warmup 2 --compile --no-timm --no-memory \
            --json "$OUT/compiled_${model}_${size}.json"
    done
done

# 50 training steps: 50 x 128 generated images, one epoch. Only --data-path, --model, --epochs, --batch-size
# and --output-dir are passed, so that renamed flags elsewhere in train.py do not break this check.
DATA="$OUT/imagefolder"
"$PY" - "$DATA" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for split, per_class in (("train", 640), ("val", 16)):  # 10 classes: 6400 training images = 50 steps of 128
    for k in range(10):
        folder = root / split / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if not (folder / f"{i:04d}.jpg").exists():
                pixels = np.clip(rng.normal(25 * k, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
print(f"ImageFolder ready under {root}")
PYEOF
step train_50_steps 75 torchrun --nproc_per_node=1 train.py --model convit_tiny --data-path "$DATA" \
    --epochs 1 --batch-size 128 --output-dir "$OUT/train"

# Per-epoch and per-image cost beside timm's scripts (TIMM_SCRIPTS: a folder holding timm's two scripts,
# e.g. written out of a clone of pytorch-image-models); both sides in bf16 autocast.
if [ -n "${TIMM_SCRIPTS:-}" ]; then
    mkdir -p "$OUT/epoch"
    step epoch_vs_timm 240 "$PY" benchmarks/bench_epoch.py --timm-scripts "$TIMM_SCRIPTS" --device cuda --threads 8 --workers 4 --repeats 1 --json "$OUT/epoch/epoch_vs_timm.json"
fi

echo "== summary"
for f in "$OUT"/*.json; do
    [ -e "$f" ] && "$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1], {f: {k: round(v, 2) for k, v in d.items()} for f, d in r['ratios'].items()})
" "$f"
done
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "failed or timed out: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
