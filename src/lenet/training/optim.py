"""Optimisers and learning-rate schedules.

The schedule is a pure function of the global step (``lr_factor``), set on the
optimiser before each step: a resumed run needs no scheduler state to continue
exactly, and many runs trained at once (``multi``) each follow their own schedule
from the same formula.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from ..configuration.run import RunConfig


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
    if o.optimizer == "sgd":
        return LeanSGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                       weight_decay=o.weight_decay)
    # foreach=True: one fused kernel per parameter group instead of one per tensor.
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


class LeanSGD:
    """torch.optim.SGD(foreach=True), the same arithmetic in the same order (bitwise equal
    weights, tested), with the same state_dict, minus one thing: torch.optim imports
    torch._dynamo the first time an optimiser is built, 1.3 s of a 13 s CPU run of the
    d2l recipe (cProfile of `lenet train --preset d2l --epochs 1` on a 2-core AMD EPYC,
    2.6 s under load). The plain SGD of the book's recipe needs none of it. One parameter
    group; no closures, sparse gradients or maximise (lenet uses none of them)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                             nesterov=nesterov, maximize=False, foreach=True, differentiable=False, fused=None)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups: list[dict[str, Any]] = [dict(self.defaults, params=params)]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if momentum != 0:
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if all(b is not None for b in bufs):
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
            else:  # the first step: each buffer starts as its gradient
                for i, (p, g) in enumerate(zip(params, grads)):
                    if bufs[i] is None:
                        bufs[i] = self.state[p]["momentum_buffer"] = g.detach().clone()
                    else:
                        bufs[i].mul_(momentum).add_(g, alpha=1 - group["dampening"])
            if group["nesterov"]:
                torch._foreach_add_(grads, bufs, alpha=momentum)
            else:
                grads = bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters by position, their state by that position."""
        group = self.param_groups[0]
        state = {i: dict(self.state[p]) for i, p in enumerate(group["params"]) if p in self.state}
        return {"state": state, "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A state saved by this class or by torch.optim.SGD (the checkpoints written before
        this class); refused, as torch refuses it, when the parameters do not match."""
        groups = state_dict["param_groups"]
        params = self.param_groups[0]["params"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                             "of optimizer's group")
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k != "params"})
        self.state = defaultdict(dict)
        for index, saved in state_dict["state"].items():
            p = params[groups[0]["params"].index(index)]
            self.state[p] = {k: (v.to(device=p.device, dtype=p.dtype) if isinstance(v, torch.Tensor) else v)
                             for k, v in saved.items()}
