"""Shared plumbing for the thin scripts in ``stages/``: params, one-line errors, wall time."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from transmodal.params import CheckpointError, ParamError, load_params, validate_stage

TIMINGS_DIR = Path("metrics/timings")
CONSTRAINTS = Path("constraints.txt")
# The packages whose version can change an output's bytes: the decoder, the models, the array and file formats.
# (trackers and supervision: ByteTrack's tracks; scipy: the synthetic set and the bootstrap intervals)
OUTPUT_PACKAGES = (
    "numpy", "opencv-python", "pandas", "pyarrow", "safetensors", "scipy", "supervision", "torch",
    "trackers", "transformers",
)  # fmt: skip


def version_notes(constraints: Path = CONSTRAINTS) -> list[str]:
    """One line per package of :data:`OUTPUT_PACKAGES` whose installed version is not the one
    ``constraints.txt`` pins (a local label such as ``+cpu`` aside): the outputs may then differ in their bytes
    from those the committed dvc.lock records. Nothing when there is no constraints.txt."""
    from importlib.metadata import PackageNotFoundError, version

    if not constraints.is_file():
        return []
    pinned = {}
    for line in constraints.read_text().splitlines():
        name, sep, value = line.partition("==")
        if sep:
            pinned[name.strip().lower()] = value.strip()
    notes = []
    for package in OUTPUT_PACKAGES:
        if package not in pinned:
            continue
        try:
            here = version(package).partition("+")[0]
        except PackageNotFoundError:
            continue
        if here != pinned[package]:
            notes.append(
                f"{package} {here} is installed, {constraints} pins {pinned[package]}: outputs may differ in "
                "their bytes from those dvc.lock records (docs/decisions.md 37; `make setup` installs the pins)"
            )
    return notes


class StageInputError(RuntimeError):
    """Bad input that stops a stage before any work (the message is one line and names what to fix)."""


def run_stage(name: str, body: Callable[[dict], None], params_path: str | Path = "params.yaml") -> None:
    """Load params, validate what stage ``name`` reads (:func:`~transmodal.params.validate_stage`: sections,
    their relations, local checkpoints, ablation variants) before any work, run ``body(params)``, record the
    stage's wall time in ``metrics/timings/<name>.json``.

    Expected errors (bad params, missing checkpoints, bad input) become one line on stderr and exit code 2.
    """
    from transmodal.io import remove_unfinished, write_json

    start = time.perf_counter()
    try:
        params = load_params(params_path)
        validate_stage(name, params)
        if "WORLD_SIZE" not in os.environ:  # the process that launches torchrun's workers says it once
            for note in version_notes():
                print(f"{name}: note: {note}", file=sys.stderr)
        body(params)
    except (ParamError, CheckpointError, StageInputError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:  # an input an upstream stage writes (dvc repro builds it first)
        missing = err.filename or str(err)
        print(
            f"{name}: error: {missing}: no such file; `dvc repro {name}` runs the stages that write it",
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        # Outputs appear only once complete; frames and features keep their finished shards (data/.partial/).
        remove_unfinished()
        print(
            f"{name}: interrupted; nothing it was writing looks complete. Run it again (frames and features "
            "resume from their finished shards)",
            file=sys.stderr,
        )
        sys.exit(130)
    seconds = time.perf_counter() - start
    if "WORLD_SIZE" in os.environ:  # a torchrun worker: the process that launched the workers reports
        return
    write_json({"stage": name, "seconds": round(seconds, 2)}, TIMINGS_DIR / f"{name}.json")
    print(f"{name}: done in {seconds:.1f} s", file=sys.stderr)
