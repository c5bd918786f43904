#!/usr/bin/env bash
# The features stage on CUDA at dataset-like scale, with the crops normalised on the device (the stage
# since 2026-12-04) and on the host (before), each against its bare forward; token dropping at a larger
# batch; the uint8 path's tokens against the float32 path's; the train stage twice on CUDA (the math attention
# kernel in training steps since 2026-12-05): byte-identical weights, and any determinism warning left.
# Results: docs/benchmarks.md, "CUDA".
#
#   OUT=/some/dir bash benchmarks/cuda_features.sh
#
# Same requirements as benchmarks/cuda_check.sh (wheels in .whl/ are installed into /tmp/site first).
OUT=${OUT:-/tmp/cuda-features}
. benchmarks/cuda_env.sh

step "uint8 crops normalised on the device against host float32 pixels"
timeout 60 python3 - <<'EOF' | tee "$OUT/uint8.txt"
import tempfile, torch
from transformers import VideoMAEConfig, VideoMAEModel
from transmodal.features.backbone import FrozenBackbone, processor_class
from transmodal.params import BackboneConfig
folder = tempfile.mkdtemp()
torch.manual_seed(0)
VideoMAEModel(VideoMAEConfig()).save_pretrained(folder)
processor_class()().save_pretrained(folder)
for precision in ("fp32", "fp16"):
    b = FrozenBackbone(BackboneConfig(checkpoint=folder, device="cuda", precision=precision), 16)
    crops = torch.randint(0, 256, (4, 16, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    on_device = b.normalizer.on_device(crops.cuda()).cpu()
    host = b.normalizer(crops.numpy())
    same_pixels = torch.equal(on_device, host)
    same_tokens = torch.equal(b.forward(crops), b.forward(host))
    print(f"{precision}: pixels identical {same_pixels}, tokens identical {same_tokens}")
EOF

step "features stage, normalised on the device"
timeout 120 python3 benchmarks/real_size.py --stage features --device cuda --videos 64 --repeats 3 \
  --json "$OUT/features_device.json" 2>&1 | grep -E "^\| features|^\|---|^\| stage|notes|features:" | tail -5
step "features stage, normalised on the host"
timeout 120 python3 benchmarks/real_size.py --stage features --device cuda --videos 64 --repeats 3 --host-normalise \
  --json "$OUT/features_host.json" 2>&1 | grep -E "^\| features|^\|---|^\| stage|notes|features:" | tail -5

step "keep.py batch 32"
timeout 90 python3 benchmarks/keep.py --device cuda --batch 32 --repeats 10 --json "$OUT/keep_b32.json" 2>&1 | tail -7

step "the train stage twice on CUDA: identical weights, determinism warnings left"
demo_stages 60 synth checkpoints prepare frames detect pose features
sed -i 's/^\(  epochs: \)20/\12/' params.yaml
for run in 1 2; do
  timeout 90 python3 -W always stages/train.py 2>&1 | grep -iE "determinis|done in|error" | sort | uniq -c | head -20 | tee -a "$OUT/train_warnings.txt"
  cp models/transmodal/model.safetensors "$OUT/train_run$run.safetensors"
done
if cmp -s "$OUT/train_run1.safetensors" "$OUT/train_run2.safetensors"; then
  echo "train on CUDA twice: model.safetensors byte-identical" | tee -a "$OUT/train_warnings.txt"
else
  echo "train on CUDA twice: model.safetensors DIFFERS" | tee -a "$OUT/train_warnings.txt"
fi
cd "$ROOT" && rm -rf "$work"
step done
