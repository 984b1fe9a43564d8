"""Optimisers and learning-rate schedules.

Each optimiser's update rule is written once (``sgd_update``, ``adam_update``) and
serves every form of step:

- one model, numbers for hyper-parameters: torch.optim's foreach arithmetic, bit for
  bit (tested), without torch.optim, whose first use imports torch._dynamo;
- K stacked models (training.stacked): a (K, 1, ...) tensor per hyper-parameter that
  broadcasts over each parameter, so each model follows its own settings;
- a CUDA graph (``graphable``): the lr and Adam's step count are tensors on the
  device, filled and counted there, so replaying the step needs no host sync.

The schedule is a pure function of the global step (``lr_factor``), set on the
optimiser before each step: a resumed run needs no scheduler state to continue
exactly, and K runs trained at once each follow their own schedule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import Tensor

from ..configuration.run import RunConfig

Hyper = float | Tensor | Sequence[Tensor]  # a number, one tensor for all, or one per parameter


def _axpy_(ys: list[Tensor], xs: list[Tensor], a: Hyper) -> None:
    """ys += a * xs."""
    if isinstance(a, (int, float)):
        torch._foreach_add_(ys, xs, alpha=a)
    else:
        torch._foreach_add_(ys, torch._foreach_mul(xs, a))


def _nonzero(value: Hyper) -> bool:
    return not isinstance(value, (int, float)) or value != 0


def _neg(value: Hyper) -> Hyper:
    if isinstance(value, (int, float, Tensor)):
        return -value
    return [-v for v in value]


@torch.no_grad()
def sgd_update(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor | None], *, lr: Hyper,
               momentum: Hyper = 0.0, dampening: float = 0.0, weight_decay: Hyper = 0.0,
               nesterov: bool = False) -> list[Tensor | None]:
    """One SGD step (momentum, Nesterov, L2 weight decay) in place; returns the momentum
    buffers (None without momentum). ``buffers``: last step's, None before the first."""
    if _nonzero(weight_decay):
        if isinstance(weight_decay, (int, float)):
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    if _nonzero(momentum):
        if all(b is not None for b in buffers):
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1 - dampening)
        else:  # the first step: each buffer starts as its gradient
            per = momentum if isinstance(momentum, Sequence) else [momentum] * len(params)
            for i, g in enumerate(grads):
                if buffers[i] is None:
                    buffers[i] = g.detach().clone()
                else:
                    buffers[i].mul_(per[i]).add_(g, alpha=1 - dampening)
        if nesterov:
            _axpy_(grads, buffers, momentum)
        else:
            grads = buffers
    _axpy_(params, grads, _neg(lr))
    return buffers


@torch.no_grad()
def adam_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                step: int | Tensor, *, lr: Hyper, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: Hyper = 0.0, decoupled: bool = False, eps_hat: bool = False) -> None:
    """One Adam step (AdamW with ``decoupled``) in place; ``step``: the count including
    this one (a tensor on the device for a CUDA graph). ``eps_hat``: eps is added to
    sqrt(v) before the bias correction, as Keras does, not after it, as torch does."""
    beta1, beta2 = betas
    numbers = isinstance(lr, (int, float)) and isinstance(weight_decay, (int, float)) and isinstance(step, int)
    if _nonzero(weight_decay):
        if decoupled and numbers:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        elif decoupled:
            lrs = lr if isinstance(lr, Sequence) else [lr] * len(params)
            wds = weight_decay if isinstance(weight_decay, Sequence) else [weight_decay] * len(params)
            torch._foreach_mul_(params, [1 - a * w for a, w in zip(lrs, wds)])
        elif isinstance(weight_decay, (int, float)):
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        else:
            grads = torch._foreach_add(grads, torch._foreach_mul(params, weight_decay))
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if eps_hat:
        torch._foreach_add_(denom, eps)
    if numbers:  # torch.optim.Adam's non-capturable arithmetic, step for step
        step_size = [(lr / (1 - beta1 ** step)) * -1] * len(params)
        torch._foreach_div_(denom, [(1 - beta2 ** step) ** 0.5] * len(params))
        if not eps_hat:
            torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)
        return
    torch._foreach_div_(denom, (1 - beta2 ** step) ** 0.5)
    if not eps_hat:
        torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, [a / (1 - beta1 ** step) for a in lr] if isinstance(lr, Sequence)
                        else lr / (1 - beta1 ** step))
    torch._foreach_sub_(params, update)


class Optimizer:
    """SGD, Adam or AdamW over a list of tensors, with torch.optim's interface and
    state_dict layout (checkpoints from either load in the other); one parameter group,
    no closures, sparse gradients or maximise (lenet uses none of them)."""

    def __init__(self, params, kind: str = "sgd", lr: Any = 0.1, momentum: Any = 0.0, weight_decay: Any = 0.0,
                 nesterov: bool = False, dampening: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, eps_hat: bool = False, graphable: bool = False):
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer {kind!r}: sgd, adam or adamw")
        if kind == "sgd" and nesterov and (not _nonzero(momentum) or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        # eps_hat is no torch.optim key: kept beside the groups, so the state_dict stays torch's
        self.kind, self.graphable, self.eps_hat = kind, graphable, eps_hat
        if kind == "sgd":
            self.defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                 nesterov=nesterov, maximize=False, foreach=True, differentiable=False, fused=None)
        else:
            self.defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=False,
                                 maximize=False, foreach=True, capturable=graphable, differentiable=False,
                                 fused=None, decoupled_weight_decay=kind == "adamw")
        self.param_groups: list[dict[str, Any]] = [dict(self.defaults, params=params)]
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)

    @property
    def params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def hyper(self, name: str) -> Hyper:
        """A hyper-parameter as the update rules take it: a number, a 0-d tensor, or for
        (K,) values of K stacked models one (K, 1, ...) view per parameter."""
        value = self.param_groups[0][name]
        if isinstance(value, Tensor) and value.dim() == 1:
            return [value.view(-1, *([1] * (p.dim() - 1))) for p in self.params]
        return value

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if self.kind == "sgd":
            buffers = sgd_update(params, grads, [self.state[p].get("momentum_buffer") for p in params],
                                 lr=self.hyper("lr"), momentum=self.hyper("momentum"), dampening=group["dampening"],
                                 weight_decay=self.hyper("weight_decay"), nesterov=group["nesterov"])
            if _nonzero(group["momentum"]):
                for p, b in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = b
            return
        for p in params:
            if not self.state[p]:
                # A graphable step count lives on the device (counted inside the graph);
                # otherwise on the CPU, as torch.optim keeps it.
                count = torch.zeros((), device=p.device) if self.graphable else torch.tensor(0.0)
                self.state[p] = {"step": count, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        for s in states:
            s["step"] += 1
        count = states[0]["step"] if self.graphable else int(states[0]["step"])
        adam_update(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], count,
                    lr=self.hyper("lr"), betas=group["betas"], eps=group["eps"],
                    weight_decay=self.hyper("weight_decay"), decoupled=self.kind == "adamw", eps_hat=self.eps_hat)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters by position, their state by that position."""
        group = self.param_groups[0]
        state = {i: dict(self.state[p]) for i, p in enumerate(group["params"]) if self.state.get(p)}
        return {"state": state, "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A state saved by this class or by torch.optim (older checkpoints); refused, as
        torch refuses it, when the parameters do not match. A graphable optimiser keeps
        its lr tensor (filled in place) and its step count on the device."""
        groups = state_dict["param_groups"]
        params = self.params
        if len(groups) != 1 or len(groups[0]["params"]) != len(params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size "
                             "of optimizer's group")
        keep_lr = self.param_groups[0]["lr"] if isinstance(self.param_groups[0]["lr"], Tensor) else None
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k in self.defaults})
        if keep_lr is not None:
            self.param_groups[0]["lr"] = keep_lr
        self.state = defaultdict(dict)
        for index, saved in state_dict["state"].items():
            p = params[groups[0]["params"].index(index)]
            self.state[p] = {k: self._placed(k, v, p) for k, v in saved.items()}

    def _placed(self, key: str, value: Any, param: Tensor) -> Any:
        if not isinstance(value, Tensor):
            return value
        if key == "step":  # float32 like torch's; on the device only for a graph
            return value.to(device=param.device if self.graphable else "cpu", dtype=torch.float32)
        return value.to(device=param.device, dtype=param.dtype)


def make_optimizer(params, cfg: RunConfig, graphable: bool = False) -> Optimizer:
    """The run's optimiser over ``params``. ``graphable``: one a CUDA graph can record (the
    lr a tensor on the device, filled by set_lr before each step)."""
    o = cfg.optim
    params = list(params)
    lr: Any = torch.tensor(o.lr, device=params[0].device) if graphable else o.lr
    return Optimizer(params, o.optimizer, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                     nesterov=o.nesterov and o.momentum > 0, eps=o.eps, eps_hat=o.eps_hat, graphable=graphable)


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


def set_lr(optimizer: Any, lr: float | Tensor) -> None:
    """This step's lr: a number, or (K,) learning rates of K stacked models."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor) and not isinstance(lr, Tensor):
            group["lr"].fill_(lr)  # a graphable optimiser's: filled on the device, no sync
        else:
            group["lr"] = lr
