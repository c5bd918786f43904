#!/usr/bin/env bash
# The CUDA path in one run, for a machine with an NVIDIA GPU (results recorded in docs/benchmarks.md):
#   1. benchmarks/keep.py: VideoMAE-B + head per keep ratio (batch 1 and batch 8), fp16;
#   2. benchmarks/real_size.py: detect, pose, features stages against their bare forwards at real size, fp16;
#   3. the demo's stages synth .. evaluate on CUDA (device: auto), run directly (no DVC), then
#      - the features stage again on the CPU, and the CUDA tokens (fp32 and fp16) against them with the
#        project's TOKEN_TOLERANCE;
#      - the train stage twice on CUDA, and whether the two model files are byte-identical.
#
#   OUT=/some/dir bash benchmarks/cuda_check.sh
#
# Needs python3 with torch (CUDA build), transformers, numpy, pandas, pyarrow, opencv, scipy, matplotlib, tqdm,
# pyyaml, safetensors, einops, scikit-learn; wheels in .whl/ (trackers, supervision, ...) are installed into
# /tmp/site first. Each step has its own time limit, so one slow step does not take the others with it.
OUT=${OUT:-/tmp/cuda-check}
. benchmarks/cuda_env.sh

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

step "keep.py batch 1"
timeout 150 python3 benchmarks/keep.py --device cuda --repeats 20 --json "$OUT/keep_b1.json" 2>&1 | tail -8
step "keep.py batch 8"
timeout 120 python3 benchmarks/keep.py --device cuda --batch 8 --repeats 10 --json "$OUT/keep_b8.json" 2>&1 | tail -8
step "real_size.py"
timeout 240 python3 benchmarks/real_size.py --device cuda --videos 16 --repeats 3 --json "$OUT/real_size.json" 2>&1 | tail -14

step "demo stages on CUDA"
demo_stages 150 synth checkpoints prepare frames detect pose features train evaluate
python3 - <<'EOF' | tee "$OUT/demo_cuda.txt"
import json
for name in ("features", "train", "eval"):
    m = json.load(open(f"metrics/{name}.json"))
    keys = ("device", "seconds", "clips_per_s", "best_epoch", "clip_accuracy", "sequence_accuracy", "video_accuracy")
    print(name, {k: m[k] for k in keys if k in m})
EOF
cp metrics/eval.json "$OUT/demo_eval_cuda.json" 2>/dev/null
mv data/features data/features_cuda32
cp data/clips.parquet data/clips_cuda32.parquet
step "features on the CPU, and CUDA fp16, against CUDA fp32"
sed -i 's/^\(  device: \)auto/\1cpu/' params.yaml   # every section's device: cpu (train/eval not re-run)
timeout 150 python3 stages/features.py 2>&1 | grep -E "done in|error"
mv data/features data/features_cpu
sed -i 's/^\(  device: \)cpu/\1auto/; s/^\(  precision: \)fp32/\1fp16/' params.yaml
timeout 150 python3 stages/features.py 2>&1 | grep -E "done in|error"
mv data/features data/features_cuda16
sed -i 's/^\(  precision: \)fp16/\1fp32/' params.yaml
python3 - <<'EOF' | tee "$OUT/tokens.txt"
import numpy as np
from transmodal.features.cache import FeatureStore, tokens_close
cpu = FeatureStore("data/features_cpu", "data/clips_cuda32.parquet")
rows = np.arange(len(cpu))
ref = cpu.tokens(rows).float().numpy()
for name in ("features_cuda32", "features_cuda16"):
    other = FeatureStore(f"data/{name}", "data/clips_cuda32.parquet").tokens(rows).float().numpy()
    diff = np.abs(other - ref)
    scale = np.abs(ref)
    print(f"{name} vs CPU fp32: clips {len(rows)}, max |a-b| {diff.max():.4g}, "
          f"max |a-b|/(0.01+0.01|b|) {(diff / (0.01 + 0.01 * scale)).max():.3g}, "
          f"within TOKEN_TOLERANCE: {tokens_close(other, ref)}")
EOF
step "train twice on CUDA"
mv data/features_cuda32 data/features
cp -r models/transmodal models/transmodal_first
timeout 150 python3 stages/train.py 2>&1 | grep -E "done in|error"
if cmp -s models/transmodal/model.safetensors models/transmodal_first/model.safetensors; then
  echo "train on CUDA twice: model.safetensors byte-identical" | tee -a "$OUT/tokens.txt"
else
  echo "train on CUDA twice: model.safetensors DIFFERS" | tee -a "$OUT/tokens.txt"
fi
ls models/transmodal
cd "$ROOT" && rm -rf "$work"
step done
