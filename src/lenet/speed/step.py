"""The training step behind one seam: ``make_step(model, optimizer, loss_fn, speed)``.

    step(x, y) -> (loss, logits)   one optimiser update on a batch; both detached
    step.forward                   the module the step computes with (evaluation uses it)
    with step.held(): ...          what a run of steps holds (halves: the threads)

Single runs, runs stacked K at once, ``lenet bench`` and the calibration all take
their steps here, so the training loop never sees precision, layout, micro-batches,
halves or CUDA graphs. ``loss_fn(logits, labels)`` returns the batch's mean loss in
float32: () for one model, (K,) for K stacked models, whose gradients are
independent, so backward of the sum is each model's own gradient.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from .choice import Speed
from .forward import autocast, prepare_forward
from .graphs import CudaGraphStep
from .halves import in_halves, threads_for

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EagerStep:
    """A step computed op by op: the whole batch, micro-batches, or two halves at once."""

    def __init__(self, forward: nn.Module, optimizer: Any, loss_fn: LossFn, speed: Speed):
        self.forward, self.optimizer, self.loss_fn = forward, optimizer, loss_fn
        self.bf16, self.micro_batch, self.halves = speed.bf16, speed.micro_batch, speed.parallel_halves

    def held(self) -> contextlib.AbstractContextManager:
        """Halves take half of torch's threads each, held over a run of steps: set per
        step, the threads the loop's own operations wake would spin on the halves' cores."""
        return threads_for(self.halves)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self._forward_backward(x, y)
        self.optimizer.step()
        return loss, logits

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its logits, its gradients accumulated; in parts, each
        part's mean loss weighted by its share of the batch, so the gradients sum to the
        whole batch's (up to rounding)."""
        def part(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast(x.device, self.bf16):
                logits = self.forward(xs)
            loss = self.loss_fn(logits, ys)
            if ys.shape[-1] < y.shape[-1]:
                loss = loss * (ys.shape[-1] / y.shape[-1])
            # K models' losses summed: each model's gradient is its own. No explicit gradient
            # tensor: autograd then checks its shape through torch.fx, which imports sympy.
            (loss if loss.dim() == 0 else loss.sum()).backward()
            return loss.detach(), logits.detach()

        if self.halves:
            results = [r for r in in_halves(part, x, y) if r is not None]
        else:
            size = self.micro_batch or len(x)
            results = [part(xs, ys) for xs, ys in zip(x.split(size), y.split(size))]
        if len(results) == 1:
            return results[0]
        return torch.stack([loss for loss, _ in results]).sum(0), torch.cat([logits for _, logits in results])


def make_step(model: nn.Module, optimizer: Any, loss_fn: LossFn, speed: Speed) -> EagerStep | CudaGraphStep:
    """The step ``speed`` asks for, over ``model``'s parameters (which ``optimizer``
    updates): its forward prepared (layout, fused layers, compile), then eager or, with
    ``speed.cuda_graphs``, recorded once per batch shape and replayed."""
    forward = prepare_forward(model, speed.channels_last, speed.fused_layers, speed.compile)
    if speed.cuda_graphs:
        return CudaGraphStep(model, forward, optimizer, loss_fn, speed.bf16)
    return EagerStep(forward, optimizer, loss_fn, speed)
