"""What resuming costs the train stage at the paper's size: the state written after each epoch against a step.

    python benchmarks/train_state.py [--batch B] [--classes N] [--repeats R] [--threads N] [--json PATH]

Model, random weights: the head ``TransModal(ModelConfig(), SelectorConfig(), dim=768, num_classes=N,
num_frames=16, tubelet_size=2, patches_per_group=196)`` with the default params of ``transmodal.params``
(the paper's size: 8 groups of 196 VideoMAE-B tokens; N=101, UCF101's classes, by default), AdamW and the
cosine schedule as ``train_model`` builds them. Inputs: random tokens (B, 8, 196, 768) and keypoints
(B, 16, 17, 2), labels drawn once.

Timed, each ``--repeats`` times after one untimed round, medians reported:

- step: one training step as ``train_model`` runs it (forward, cross-entropy, backward, AdamW's step);
- save: :meth:`transmodal.training.train.TrainingState.save`, what the train stage writes after every epoch
  but the last (``torch.save`` of the weights, AdamW's moments, the schedule, the generators, the history;
  written atomically and synced to the disk), in its two forms: the best epoch is the one just saved (its
  weights are the model's), and the best epoch is an earlier one (its weights are written beside);
- restore: :meth:`~transmodal.training.train.TrainingState.restore` of the larger state (what a resumed
  run reads once).

Reported: the times, the state's size on the disk, and each save in training steps (save / step). An epoch
of UCF101's split 1 at the paper setup is 34,332 training clips (4 a video, as the README estimates them), 34,332 / B
steps, so the share of an epoch a save takes is (save / step) / (34,332 / B). The state goes to a temporary folder (``--dir`` to put it
on the disk the data lives on), removed afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transmodal.distributed import World  # noqa: E402
from transmodal.model import TransModal  # noqa: E402
from transmodal.params import ModelConfig, SelectorConfig, TrainConfig  # noqa: E402
from transmodal.training.train import TrainingState  # noqa: E402

UCF101_TRAIN_CLIPS = 34332  # split 1's training clips at the paper setup (4 a video; README, "Disk")
GROUPS, PATCHES, DIM, FRAMES, JOINTS = 8, 196, 768, 16, 17


def median_s(run, repeats: int) -> tuple[float, list[float]]:
    run()  # untimed round
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=TrainConfig().batch_size, help="train.batch_size")
    parser.add_argument("--classes", type=int, default=101, help="UCF101's by default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dir", type=Path, help="where the state is written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = TrainConfig(epochs=100)
    model = TransModal(
        ModelConfig(), SelectorConfig(), dim=DIM, num_classes=args.classes, num_frames=FRAMES,
        tubelet_size=2, patches_per_group=PATCHES, num_joints=JOINTS,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    tokens = torch.randn(args.batch, GROUPS, PATCHES, DIM)
    pose = torch.rand(args.batch, FRAMES, JOINTS, 2)
    labels = torch.randint(args.classes, (args.batch,))

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(tokens, pose).logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s, step_times = median_s(step, args.repeats)
    parameters = sum(p.numel() for p in model.parameters())
    history = [{"epoch": e, "train_loss": 1.0, "val_acc": 0.5} for e in range(1, 38)]
    earlier = {k: v.detach().clone() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        state = TrainingState(Path(work), {"bench": 1}, model, optimizer, scheduler, generator,
                              torch.device("cpu"), World())  # fmt: skip
        path = state.directory / TrainingState.FILE
        saves = {}
        for form, best_epoch in (("best is this epoch", len(history)), ("best is an earlier epoch", 30)):
            seconds, times = median_s(
                lambda b=best_epoch: state.save(history, (0.5, -1.0), b, earlier), args.repeats
            )
            saves[form] = {"median_s": seconds, "times_s": times, "bytes": path.stat().st_size,
                           "steps": seconds / step_s}  # fmt: skip
        restore_s, restore_times = median_s(state.restore, args.repeats)

    steps_per_epoch = UCF101_TRAIN_CLIPS / args.batch
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "classes": args.classes,
        "parameters": parameters,
        "step_s": step_s,
        "step_times_s": step_times,
        "save": saves,
        "restore_s": restore_s,
        "restore_times_s": restore_times,
        "ucf101_steps_per_epoch": steps_per_epoch,
    }
    print(f"head at the paper's size: {parameters / 1e6:.2f} M parameters; batch {args.batch}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"training step: {step_s * 1000:.0f} ms (median of {args.repeats})")
    for form, save in saves.items():
        share = save["steps"] / steps_per_epoch
        print(f"save, {form}: {save['median_s'] * 1000:.0f} ms, {save['bytes'] / 2**20:.0f} MiB, "
              f"{save['steps']:.2f} steps; {100 * share:.4f} % of a UCF101 epoch")  # fmt: skip
    print(f"restore: {restore_s * 1000:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
