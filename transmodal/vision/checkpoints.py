"""Resolve a checkpoint param (hub id or local folder) and load models through transformers.

Order of look-up: a local folder in Hugging Face format, then the local Hugging Face cache, then the hub
(skipped when ``HF_HUB_OFFLINE=1``). A checkpoint found nowhere raises :class:`CheckpointError`, one line
naming the param, the checkpoint and the three ways to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from transmodal.params import CheckpointError, is_hub_id


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_checkpoint(checkpoint: str, param: str, revision: str | None = None) -> str:
    """Return a local folder holding ``checkpoint`` (``config.json`` inside), fetching it if allowed.

    ``param`` is the params.yaml key that named it (for the error message); ``revision`` (the param beside
    it, ``<section>.revision``) a hub commit, branch or tag to load a hub id at: None takes the snapshot the
    cache holds, else the hub's newest.
    """
    section = param.partition(".")[0]
    local = Path(checkpoint)
    if local.is_dir():
        if revision is not None:
            raise CheckpointError(
                f"params.yaml: {section}.revision is {revision!r}, but {param} {checkpoint!r} is a folder, "
                f"which has no hub revision; set {section}.revision to null"
            )
        if not (local / "config.json").is_file():
            raise CheckpointError(
                f"params.yaml: {param} is {checkpoint!r}, a folder without config.json "
                "(expected a Hugging Face save_pretrained folder)"
            )
        return str(local)
    if not is_hub_id(checkpoint):
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}, which is not a folder and not a hub id"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    cached = cached_snapshot(checkpoint, revision)
    if cached is not None:
        return cached
    at = f" at {section}.revision {revision!r}" if revision else ""
    fetch = f"hf download {checkpoint}" + (f" --revision {revision}" if revision else "")
    hint = (
        f"provide it as a local folder (save_pretrained format) and set {param} to it, put it in the "
        f"Hugging Face cache (`{fetch}` on a networked machine, then copy HF_HOME), or allow "
        "network access (unset HF_HUB_OFFLINE)"
    )
    if _offline():
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}{at}: not in the local cache (offline); {hint}"
        )
    try:
        return snapshot_download(checkpoint, revision=revision)
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}{at}: download failed ({first_line(err)}); {hint}"
        ) from None


def hub_revision(folder: str | Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (``.../snapshots/<commit>``), as
    :func:`resolve_checkpoint` returns it for a hub id; None for a folder of the user's own. Two machines
    with the same hub id in params.yaml may hold different snapshots: this tells them apart."""
    folder = Path(folder)
    return folder.name if folder.parent.name == "snapshots" else None


def cached_snapshot(checkpoint: str, revision: str | None = None) -> str | None:
    """The folder of hub id ``checkpoint`` (at ``revision``: a commit, branch or tag; None: the cache's
    ``main``) in the local Hugging Face cache, None when it is not there (or is not a hub id). Never
    touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(checkpoint, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def load_model(model_cls, checkpoint: str, param: str, device: torch.device, dtype: torch.dtype):
    """``model_cls.from_pretrained`` on the resolved checkpoint, in eval mode, on ``device`` in ``dtype``."""
    from safetensors import SafetensorError

    folder = resolve_checkpoint(checkpoint, param)
    try:
        model = model_cls.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a cut or damaged file: SafetensorError
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}: cannot load as {model_cls.__name__} ({first_line(err)})"
        ) from None
    return model.to(device).eval()


def load_processor(processor_cls, checkpoint: str, param: str):
    """The checkpoint's own image processor (its preprocessor_config.json), never a default one."""
    folder = resolve_checkpoint(checkpoint, param)
    try:
        return processor_cls.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"params.yaml: {param} is {checkpoint!r}: no usable preprocessor_config.json ({err})"
        ) from None


def pick_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(
            "device is 'cuda' but no CUDA device is available; set the stage's device to auto or cpu"
        )
    return torch.device(device)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp16/bf16 apply on CUDA only; on CPU the model runs in fp32 (half precision there is slow or unsupported)."""
    if device.type != "cuda":
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def accelerator(device: torch.device) -> list:
    """What else moves a model's output bits: on a GPU its model and the CUDA and cuDNN versions; on the CPU
    the processor's model and the vector instructions torch's own kernels were picked for (AVX2, AVX512:
    another width sums in another order; the matrix libraries pick their code by the processor's model).
    Part of the resume keys of the detect, pose, features and train stages."""
    if device.type == "cuda":
        return [torch.cuda.get_device_name(device), torch.version.cuda, torch.backends.cudnn.version()]
    if device.type == "cpu":
        return [cpu_model(), torch.backends.cpu.get_cpu_capability()]
    return []


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor's model name from ``cpuinfo`` (the text of Linux's ``/proc/cpuinfo``, read when None):
    its ``model name`` (x86); on ARM, which has none, the machine with each distinct ``CPU implementer`` and
    ``CPU part`` pair (a big.LITTLE chip has two parts); elsewhere what :mod:`platform` says."""
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, list[str]] = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), []).append(value.strip())
    if fields.get("model name"):
        return fields["model name"][0]
    cores = sorted(set(zip(fields.get("CPU implementer", []), fields.get("CPU part", []), strict=False)))
    if cores:
        return " ".join([platform.machine(), *(f"implementer {i} part {p}" for i, p in cores)])
    return platform.processor() or platform.machine()


def first_line(err: Exception) -> str:
    """The exception's type and the first line of its message that says something (torch's strict load
    opens with "Error(s) in loading state_dict for TransModal:" and names the keys after it): the part of a
    one-line error that says what the library found."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = next((line for line in lines if not line.endswith(":")), lines[0] if lines else "")
    return f"{type(err).__name__}: {said}" if said else type(err).__name__
