"""--cuda-graphs: a whole training step recorded once as a CUDA graph, then replayed.

A LeNet step on a GPU is a few dozen tiny kernels (forward, loss, backward, the
optimiser's update), each launched from Python: the GPU waits on the launches, not on
the arithmetic. Recorded as one CUDA graph (torch.cuda.graph) the step is one launch:
the batch is copied into the graph's input buffers and the graph replayed.

What recording needs, and how it is met here:
- Fixed shapes and addresses: one graph per batch shape (the last, shorter batch of an
  epoch gets its own); inputs are copied into static buffers before each replay.
- No host work inside the step: the learning rate (and Adam's step count) is a tensor
  on the device that the loop fills before each step (training.optim, graphable=True),
  and autocast's weight cache is off while recording.
- Warm-up steps before recording (CUDA's lazy initialisation, cuDNN's algorithm choice,
  the optimiser's state): they run on the current batch and change the weights, so the
  weights and the optimiser state are put back afterwards, in place (the graph holds
  their addresses), and the run trains exactly the steps it would without graphs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .forward import autocast

WARMUP_STEPS = 3  # torch's own whole-network example warms up 3 times on a side stream


@dataclass
class _Recorded:
    graph: Any  # torch.cuda.CUDAGraph
    x: torch.Tensor  # the static input the graph reads
    y: torch.Tensor
    loss: torch.Tensor  # the static outputs it writes
    logits: torch.Tensor


class CudaGraphStep:
    """``step(x, y) -> (loss, logits)``, as step.EagerStep takes it, by replaying a recorded graph."""

    def __init__(self, model: nn.Module, forward: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: nn.Module, amp: bool):
        self.model, self.forward, self.optimizer, self.loss_fn, self.amp = model, forward, optimizer, loss_fn, amp
        self.recorded: dict[tuple[int, ...], _Recorded] = {}

    def held(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recorded = self.recorded.get(tuple(x.shape)) or self._record(x, y)
        recorded.x.copy_(x)
        recorded.y.copy_(y)
        recorded.graph.replay()
        return recorded.loss, recorded.logits

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(x.device, self.amp, cache=False):  # a cached bf16 weight would go stale
            logits = self.forward(x)
        return self.loss_fn(logits, y), logits

    def _record(self, x: torch.Tensor, y: torch.Tensor) -> _Recorded:
        saved_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        saved_optimizer = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                           for p, s in self.optimizer.state.items()}
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                loss, _ = self._loss(static_x, static_y)
                loss.backward()
                self.optimizer.step()
        torch.cuda.current_stream(x.device).wait_stream(side)
        # The last warm-up's outputs hold its autograd graph, and with it the parameters'
        # AccumulateGrad nodes made on the side stream: recording on the graph's own stream
        # while they live makes autograd warn and synchronise (seen on an H200, torch 2.11).
        del loss, _
        graph = torch.cuda.CUDAGraph()
        # Gradients are made inside the graph's memory pool: backward writes them afresh
        # on every replay instead of adding to the last step's.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss, logits = self._loss(static_x, static_y)
            loss.backward()
            self.optimizer.step()
        # Keep the outputs' memory, not their autograd graph: a graph kept alive holds the
        # parameters' AccumulateGrad nodes of the recording stream, and recording the next
        # batch shape on another stream would then warn and synchronise.
        loss, logits = loss.detach(), logits.detach()
        with torch.no_grad():  # undo the warm-up, in place
            for key, value in self.model.state_dict().items():
                value.copy_(saved_model[key])
            for param, state in self.optimizer.state.items():
                before = saved_optimizer.get(param, {})
                for key, value in state.items():
                    if torch.is_tensor(value):
                        # State the warm-up created (momentum, Adam's moments and step
                        # count) starts from zero, which is what a first step assumes.
                        value.copy_(before[key]) if key in before else value.zero_()
        recorded = _Recorded(graph, static_x, static_y, loss, logits)
        self.recorded[tuple(x.shape)] = recorded
        return recorded
