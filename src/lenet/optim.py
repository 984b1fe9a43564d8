"""Optimisers and learning-rate schedules.

The schedule is a pure function of the global step (``lr_factor``), set on the
optimiser before each step: a resumed run needs no scheduler state to continue
exactly, and many runs trained at once (``multi``) each follow their own schedule
from the same formula.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .runconfig import RunConfig


def make_optimizer(model: nn.Module, cfg: RunConfig, graphable: bool = False) -> torch.optim.Optimizer:
    """The run's optimiser. ``graphable``: one a CUDA graph can record (graphs.py): its lr
    is a tensor on the device (filled by set_lr before each step, no host sync), SGD is
    the fused kernel and Adam/AdamW keep their step count on the device (capturable)."""
    o = cfg.optim
    params = model.parameters()
    if graphable:
        device = next(model.parameters()).device
        lr = torch.tensor(o.lr, device=device)
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                                   weight_decay=o.weight_decay, fused=True)
        kind = torch.optim.Adam if o.optimizer == "adam" else torch.optim.AdamW
        return kind(params, lr=lr, weight_decay=o.weight_decay, foreach=True, capturable=True)
    # foreach=True: one fused kernel per parameter group instead of one per tensor.
    if o.optimizer == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay, foreach=True)
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, foreach=True)


def lr_factor(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based), per schedule."""
    o, total = cfg.optim, max(1, cfg.train.epochs * steps_per_epoch)
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "step":
        return o.gamma ** ((step // steps_per_epoch) // o.step_epochs)
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    # onecycle: linear warm-up from lr/25 to lr, then cosine down to ~0 (Smith & Topin 2018,
    # the same shape as torch's OneCycleLR with its default div_factor of 25)
    warm = max(1, int(o.warmup_fraction * total))
    if step < warm:
        return 1 / 25 + (1 - 1 / 25) * step / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, total - warm) / max(1, total - warm)))


def learning_rate(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The lr of optimiser step ``step`` (0-based): base lr x schedule."""
    return cfg.optim.lr * lr_factor(cfg, step, steps_per_epoch)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a graphable optimiser's: filled on the device, no sync
        else:
            group["lr"] = lr
