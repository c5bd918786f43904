"""Seeds and deterministic kernels for the stages that train (train, ablate, pretrain).

Same params, inputs and thread count give the same bytes (docs/decisions.md "What reproduces bit for bit"):
torch and numpy are seeded, torch is asked for its deterministic kernels, and on CUDA the attention runs on
the math kernel. A training function decorated with :func:`leaves_torch_settings_as_found` hands the process
back with the thread count and kernel flags it found.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def seed_everything(seed: int) -> None:
    """Seed torch and numpy and ask torch for deterministic kernels (on CUDA, cuBLAS needs a fixed workspace
    for that, set before its first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def leaves_torch_settings_as_found(function):
    """Restore the process's CPU thread count and deterministic-kernel flags after ``function``: training
    sets them (its ``threads`` param, :func:`seed_everything`), and a caller (a notebook, the ablation's later
    evaluations, a recomputed backbone) would otherwise run on one thread and deterministic cuDNN."""

    @functools.wraps(function)
    def restoring(*args, **kwargs):
        threads = torch.get_num_threads()
        deterministic = torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn

    return restoring


def deterministic_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernels a training step may use on ``device``.

    On CUDA, the fused kernels' backward (flash, memory-efficient, cuDNN) accumulates the query gradient with
    atomics, and under ``warn_only=True`` torch keeps that algorithm, only warning: two runs wrote different
    weights (decision 37). The math kernel (matmul and softmax, deterministic under the fixed cuBLAS
    workspace) is used there instead. On the CPU nothing changes (its kernels already give identical bytes
    run to run at a fixed thread count).
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)
