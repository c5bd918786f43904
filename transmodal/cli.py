"""``transmodal`` command line: dataset generation and download, tiny checkpoints, stage timings, and the
trained model on one video (``predict``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transmodal.params import DEVICES, KTH_ACTIONS, KTH_SCENARIOS, CheckpointError, ParamError, SynthConfig

# What an interrupted command says after "nothing it was writing looks complete".
AGAIN = {
    "download": "; run the same command again: it resumes the download and redoes an unfinished unpacking"
}


def _synth(args: argparse.Namespace) -> None:
    from transmodal.data.synth import generate

    try:
        cfg = SynthConfig(
            seed=args.seed,
            subjects=args.subjects,
            scenarios=tuple(args.scenarios),
            actions=tuple(args.actions),
            frames_per_video=args.frames_per_video,
        )
    except ParamError as err:  # the command's flags, not params.yaml, gave the value
        message = str(err).removeprefix("params.yaml: ")
        for field in ("seed", "subjects", "scenarios", "actions", "frames_per_video"):
            message = message.replace(f"synth.{field}", f"--{field.replace('_', '-')}")
        raise ParamError(message) from None
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
        try:
            data = json.loads(path.read_text())
            rows.append((str(data["stage"]), float(data["seconds"])))
        except (ValueError, KeyError, TypeError):  # not a stage's record (edited, cut short by a full disk)
            print(f'{path}: not a stage timing (expected {{"stage": ..., "seconds": ...}}); left out')
    if not rows:
        print(f"no stage timings under {folder}")
        return
    width = max(len(name) for name, _ in rows)
    print(f"wall time of each stage's last run ({folder}):")
    print(f"{'stage':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(f"{'sum':<{width}}  {sum(s for _, s in rows):7.1f}")


def _download(args: argparse.Namespace) -> None:
    from transmodal.data.download import ARCHIVES, DATASETS, DownloadError, download, with_urls

    sources = None
    if args.url:
        if args.dataset not in DATASETS:
            raise DownloadError(f"unknown dataset {args.dataset!r}; expected one of {', '.join(DATASETS)}")
        urls = {}
        for item in args.url:
            name, sep, url = item.partition("=")
            if not sep or not name or not url:
                raise DownloadError(
                    f"--url {item!r}: expected NAME=URL, e.g. UCF101.rar=https://mirror/UCF101.rar"
                )
            urls[name] = url
        sources = with_urls(ARCHIVES[args.dataset], urls)
    summary = download(
        args.dataset,
        Path(args.root),
        progress=not args.quiet,
        keep_archives=args.keep_archives,
        sources=sources,
    )
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def _predict(args: argparse.Namespace) -> None:
    from transmodal.predict import run_predict

    run_predict(args)


def _preset(args: argparse.Namespace) -> None:
    import yaml

    from transmodal.presets import apply_preset, not_ready

    skipped: list[str] = []
    changed = apply_preset(args.name, Path(args.params), skipped=skipped)
    print(f"{args.params}: preset {args.name} set {len(changed)} value(s): {', '.join(changed) or 'none'}")
    for variant in skipped:
        print(
            f"preset: note: {variant} is not in {args.params}: its overrides were left out", file=sys.stderr
        )
    print("undo with: git checkout " + args.params)
    params = yaml.safe_load(Path(args.params).read_text())
    for note in not_ready(params, Path(args.params).parent):
        print(f"preset: note: {note}", file=sys.stderr)


def _explain(args: argparse.Namespace) -> None:
    from transmodal.predict import run_explain

    run_explain(args)


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

    fetch = sub.add_parser(
        "download", help="fetch a dataset's official archives into ROOT, in the layout `prepare` reads"
    )
    fetch.add_argument("dataset", help="kth | ucf101 | hmdb51")
    fetch.add_argument("root")
    fetch.add_argument("--keep-archives", action="store_true", help="keep the archives after unpacking")
    fetch.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="fetch the file NAME (e.g. hmdb51_org.rar) from URL instead of the official server (a mirror); "
        "repeatable",
    )
    fetch.add_argument("--quiet", action="store_true")
    fetch.set_defaults(func=_download)

    pred = sub.add_parser(
        "predict", help="the trained model on one video: top-5 actions, per-window timeline, annotated video"
    )
    pred.add_argument("video")
    pred.add_argument("--model", default="models/transmodal", help="a model folder the train stage wrote")
    pred.add_argument("--out", default=None, help="annotated video (.mp4 or .avi)")
    pred.add_argument("--json", default=None, help="per-window timeline and the video-level result")
    pred.add_argument(
        "--step", type=int, default=None, help="kept frames between windows (default: half a clip)"
    )
    pred.add_argument("--device", default="auto", choices=DEVICES)
    pred.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="shrink larger frames to this side (default: the model's frames.max_side, else 1280)",
    )
    pred.add_argument("--detector", default=None, help="RT-DETR checkpoint instead of the recorded one")
    pred.add_argument("--pose-model", default=None, help="ViTPose++ checkpoint instead of the recorded one")
    pred.add_argument("--quiet", action="store_true")
    pred.set_defaults(func=_predict)

    expl = sub.add_parser(
        "explain", help="selector scores and co-attention on the crop of one window (paper Figures 3, 4)"
    )
    expl.add_argument("video")
    expl.add_argument("--out", required=True, help="the attention/selector PNG (Figure 4)")
    expl.add_argument("--pose-out", default=None, help="the pose-track PNG (Figure 3)")
    expl.add_argument("--model", default="models/transmodal")
    expl.add_argument(
        "--window",
        type=int,
        default=None,
        help="a window of predict's timeline (the same --step); default: the one most sure of the label",
    )
    expl.add_argument("--step", type=int, default=None, help="as for predict: its windows are numbered so")
    expl.add_argument("--device", default="auto", choices=DEVICES)
    expl.add_argument("--max-side", type=int, default=None, help="as for predict")
    expl.add_argument("--detector", default=None, help="RT-DETR checkpoint instead of the recorded one")
    expl.add_argument("--pose-model", default=None, help="ViTPose++ checkpoint instead of the recorded one")
    expl.add_argument("--quiet", action="store_true")
    expl.set_defaults(func=_explain)

    preset = sub.add_parser("preset", help="merge params/NAME.yaml (e.g. paper-kth) into params.yaml")
    preset.add_argument("name")
    preset.add_argument("--params", default="params.yaml")
    preset.set_defaults(func=_preset)

    timings = sub.add_parser("timings", help="print each stage's wall time (metrics/timings/)")
    timings.add_argument("--dir", default=None)
    timings.set_defaults(func=_timings)

    args = parser.parse_args(argv)
    from transmodal.stage import StageInputError

    expected: tuple[type[Exception], ...] = (ParamError, CheckpointError, StageInputError)
    # each command's own error class, imported only for it (torch and cv2 stay out of `timings`)
    if args.command in ("predict", "explain"):
        from transmodal.predict import PredictError

        expected += (PredictError,)
    elif args.command == "download":
        from transmodal.data.download import DownloadError

        expected += (DownloadError,)
    from transmodal.io import remove_unfinished
    from transmodal.stage import interruption, os_error_line, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # `kill` or a scheduler: handled as Ctrl-C
            args.func(args)
    except expected as err:
        remove_unfinished()
        print(f"transmodal {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the file system's: a full disk, a read-only folder, no permission
        remove_unfinished()
        print(f"transmodal {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        remove_unfinished()
        code, how = interruption(interrupt)
        again = AGAIN.get(args.command, "")
        print(
            f"transmodal {args.command}: {how}; nothing it was writing looks complete{again}", file=sys.stderr
        )
        sys.exit(code)
    except BaseException:
        remove_unfinished()  # a half-written temporary never outlives the command, whatever stopped it
        raise


if __name__ == "__main__":
    main()
