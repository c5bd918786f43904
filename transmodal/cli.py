"""``transmodal`` command line: dataset generation, tiny checkpoints, stage timings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transmodal.params import KTH_ACTIONS, KTH_SCENARIOS, ParamError, SynthConfig


def _synth(args: argparse.Namespace) -> None:
    from transmodal.data.synth import generate

    cfg = SynthConfig(
        seed=args.seed,
        subjects=args.subjects,
        scenarios=tuple(args.scenarios),
        actions=tuple(args.actions),
        frames_per_video=args.frames_per_video,
    )
    summary = generate(Path(args.out), cfg, progress=not args.quiet)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def _tiny(args: argparse.Namespace) -> None:
    from transmodal.vision.tiny import write_tiny_checkpoints

    for name, folder in write_tiny_checkpoints(Path(args.out), seed=args.seed).items():
        print(f"{name}: {folder}")


def _timings(args: argparse.Namespace) -> None:
    """Print each stage's wall time, as recorded by its last run in ``metrics/timings/``."""
    from transmodal.stage import TIMINGS_DIR

    folder = Path(args.dir) if args.dir else TIMINGS_DIR
    rows = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
        data = json.loads(path.read_text())
        rows.append((data["stage"], float(data["seconds"])))
    if not rows:
        print(f"no stage timings under {folder}")
        return
    width = max(len(name) for name, _ in rows)
    print(f"wall time of each stage's last run ({folder}):")
    print(f"{'stage':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(f"{'sum':<{width}}  {sum(s for _, s in rows):7.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="transmodal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="render the synthetic KTH-like dataset into OUT")
    synth.add_argument("out")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--subjects", type=int, default=25)
    synth.add_argument("--scenarios", nargs="+", default=list(KTH_SCENARIOS), choices=KTH_SCENARIOS)
    synth.add_argument("--actions", nargs="+", default=list(KTH_ACTIONS), choices=KTH_ACTIONS)
    synth.add_argument("--frames-per-video", type=int, default=96)
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(func=_synth)

    tiny = sub.add_parser(
        "tiny-checkpoints", help="write tiny random RT-DETR / ViTPose++ / VideoMAE checkpoints"
    )
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)

    timings = sub.add_parser("timings", help="print each stage's wall time (metrics/timings/)")
    timings.add_argument("--dir", default=None)
    timings.set_defaults(func=_timings)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ParamError as err:
        print(f"transmodal {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
