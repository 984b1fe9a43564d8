"""How a model's forward pass runs: precision, layout, fused layers, evaluation batches.

Shared by training (speed.step builds on it) and inference (evaluation, bench), which
never need the training step.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .fused import fused_forward

# Images per evaluation batch where the config leaves it open: a GPU wants big batches to
# stay busy; on a CPU a batch of 2,048's first activations outgrow the caches, and 1,000
# divides the test set and the usual validation splits (no odd last batch for oneDNN to
# build kernels for). Measurements: docs/speed.md.
EVAL_BATCH_GPU, EVAL_BATCH_CPU = 2048, 1000


def eval_batch_size(requested: int | None, device: torch.device) -> int:
    """train.eval_batch_size, or this device's default where it is None."""
    if requested is not None:
        return requested
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH_GPU


def autocast(device: torch.device, enabled: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast: bf16 needs no loss scaling, unlike fp16, and runs on CPUs with
    AVX-512 BF16/AMX as well as on CUDA. ``cache=False`` while recording a CUDA graph: a
    bf16 copy of a weight cached at recording time would never be refreshed."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def prepare_forward(model: nn.Module, channels_last: bool, fused_layers: bool, compile: bool = False) -> nn.Module:
    """The module that computes ``model``'s forward the fast way: the model moved to
    channels-last memory in place, wrapped in the fused layers, compiled. It shares the
    model's parameters, so weights are saved from ``model`` (no "_orig_mod." prefix)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = fused_forward(model) if fused_layers else model
    return torch.compile(forward) if compile else forward


def finite_check_every(device: torch.device) -> int:
    """Steps between looks for a non-finite loss: each look is a host sync, which a GPU
    run pays for, while the step that went bad is recorded on the device either way."""
    return 1 if device.type == "cpu" else 50
