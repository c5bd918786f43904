"""Shared plumbing for the thin scripts in ``stages/``: params, one-line errors, wall time."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from transmodal.params import CheckpointError, ParamError, load_params, section, validate_stage

TIMINGS_DIR = Path("metrics/timings")
PIPELINE_FOLDERS = (
    "data/",
    "models/",
    "metrics/",
)  # where the stages' outputs live (a missing one: dvc repro)
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


class Interrupted(KeyboardInterrupt):
    """A stage stopped by a signal (SIGINT, or SIGTERM from ``kill`` or a scheduler): handled as Ctrl-C, its
    exit code 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def is_worker() -> bool:
    """Whether this process is one of torchrun's workers. torchrun sets TORCHELASTIC_RUN_ID for them; WORLD_SIZE
    alone is no sign (a cluster's job environment may set it for the process that is to launch torchrun)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the block, SIGTERM (``kill``, a scheduler, torchrun stopping a worker) raises :class:`Interrupted`,
    so it is handled as Ctrl-C; the previous handler is back afterwards."""

    def terminate(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_line(err: OSError) -> str:
    """An error of the file system (a full disk, a read-only folder, no permission) as one line."""
    return f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")


def interruption(interrupt: KeyboardInterrupt) -> tuple[int, str]:
    """(exit code, what happened) of a Ctrl-C or another signal: 128 + the signal's number."""
    signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
    how = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
    return 128 + signum, how


class StageInputError(RuntimeError):
    """Bad input that stops a stage (the message is one line and names what to fix)."""


def run_stage(name: str, body: Callable[[dict], None], params_path: str | Path = "params.yaml") -> None:
    """Load params, validate what stage ``name`` reads (:func:`~transmodal.params.validate_stage`: sections,
    their relations, local checkpoints, ablation variants) before any work, run ``body(params)``, record the
    stage's wall time in ``metrics/timings/<name>.json``.

    Expected errors (bad params, missing checkpoints, bad input) become one line on stderr and exit code 2;
    an error of the file system (a full disk, no permission) one line and exit code 1. Ctrl-C, and SIGTERM
    (``kill``, a scheduler, torchrun stopping the other workers when one failed), remove what the stage was
    writing and exit 128 + the signal's number; so does any other error before its traceback.
    """
    from transmodal.io import remove_unfinished, write_json

    start = time.perf_counter()
    try:
        params = load_params(params_path)
        validate_stage(name, params)
        elsewhere = other_machine(params)  # read now: a bad compute.nnodes fails before the work, not after
        if not is_worker():  # the process that launches torchrun's workers says it once
            for note in version_notes():
                print(f"{name}: note: {note}", file=sys.stderr)
        with sigterm_as_interrupt():
            body(params)
    except (ParamError, CheckpointError, StageInputError) as err:
        remove_unfinished()
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:  # an input an upstream stage writes (dvc repro builds it first)
        remove_unfinished()
        missing = err.filename or str(err)
        upstream = str(missing).startswith(PIPELINE_FOLDERS)
        hint = f"; `dvc repro {name}` runs the stages that write it" if upstream else ""
        print(f"{name}: error: {missing}: no such file{hint}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the file system's: a full disk, a read-only folder, no permission
        remove_unfinished()
        print(f"{name}: error: {os_error_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        # Outputs appear only once complete; what a stage finished waits in data/.partial/ for the rerun.
        remove_unfinished()
        code, how = interruption(interrupt)
        kept = kept_parts(name)
        again = f": the same run resumes from what it finished, kept in {kept}" if kept else ""
        print(f"{name}: {how}; nothing it was writing looks complete. Run it again{again}", file=sys.stderr)
        sys.exit(code)
    except BaseException:
        remove_unfinished()  # a half-written temporary never outlives the stage, whatever stopped it
        raise
    seconds = time.perf_counter() - start
    if is_worker():  # a torchrun worker: the process that launched the workers reports
        return
    if not elsewhere:  # as the outputs, from the first machine only (a shared folder has one)
        write_json({"stage": name, "seconds": round(seconds, 2)}, TIMINGS_DIR / f"{name}.json")
    print(f"{name}: done in {seconds:.1f} s", file=sys.stderr)


def kept_parts(name: str) -> Path | None:
    """The folder in which stage ``name`` (``ablate@full``: a variant's) keeps what it finished for the run
    again (:class:`~transmodal.io.Resumable`), when it holds a finished part: a stage that keeps nothing
    (synth, evaluate, detect with ``source: annotations``) or was stopped before its first part has none."""
    from transmodal.io import stage_parts

    stage, _, variant = name.partition("@")
    folder = stage_parts(stage) / variant
    if not folder.is_dir():
        return None
    finished = any(path.is_file() and not path.name.startswith(".") for path in folder.rglob("*"))
    return folder if finished else None  # a temporary (".<name>.<random>.tmp") is no finished part


def other_machine(params: dict) -> bool:
    """Whether this process launched a stage's workers on a machine other than the first of several
    (``compute.nnodes`` > 1 and NODE_RANK > 0): rank 0, which writes the outputs, runs on the first."""
    nnodes = section(params, "compute").nnodes if "compute" in params else 1
    node_rank = os.environ.get("NODE_RANK", "0").strip()
    return (
        nnodes > 1 and node_rank.isdigit() and int(node_rank) > 0
    )  # "00" is the first, as torchrun reads it
