#!/usr/bin/env bash
# Train the CPU preview family (five attention variants, same backbone, recipe and seed)
# into checkpoints/. Needs ../shared/data/imagenette. About 5 minutes per model on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/imagenette}
for attention in none se ssa salient cbam; do
  python -m ssaviz train --preset imagenette-cpu --attention "$attention" --seed 0 \
    --data "$DATA/train-144.zip" --val "$DATA/val-224.zip" \
    --out runs/cpu-preview --name "cpu18_$attention"
  cp "runs/cpu-preview/cpu18_$attention.safetensors" "runs/cpu-preview/cpu18_$attention.json" checkpoints/
done
