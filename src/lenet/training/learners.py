"""What a training step changes, for one model or K stacked models: one protocol.

    learner.k                     runs trained together (1: a single run)
    learner.forward               the module evaluation runs: a batch in, (B, C) or (K, B, C) out
    learner.step(x, y, step)      one optimiser step at global step ``step`` -> (loss, logits)
    with learner.held(): ...      a run of steps (what the step holds meanwhile is its own)
    learner.model(k)              run k's model as it is saved (the moving average, if any)
    learner.run_state(k)          run k's weights, optimiser state and extras, for its checkpoint
    learner.load(saved)           every run's checkpoint back in

The step itself comes from the speed package (speed.step.make_step); the loss
(loss.cross_entropy) and each optimiser's update rule (optim) are the same for both.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Sequence

import torch
from torch import nn

from ..configuration.run import RunConfig
from ..data.augment import Augmenter
from ..errors import DivergedError
from ..model.network import LeNet
from ..speed.choice import Speed
from ..speed.step import make_step
from .loop import EpochState
from .loss import cross_entropy
from .optim import lr_factor, make_optimizer, set_lr
from .stacked import StackedModels, StackedOptimizer


class Learner:
    """One model, its optimiser and its loss. ``forward`` shares the model's parameters
    (layout, fused layers, compile: speed.step), so weights are saved from ``model``."""

    k = 1

    def __init__(self, model: nn.Module, cfg: RunConfig, steps_per_epoch: int, speed: Speed):
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.optimizer = make_optimizer(model.parameters(), cfg, graphable=speed.cuda_graphs)
        self.step_fn = make_step(model, self.optimizer, self.loss, speed)
        self.raw, self.forward = model, self.step_fn.forward
        # optim.ema: the weights' moving average, which becomes the run's model.
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.optim.ema > 0 else None
        # data.augment: random changes to each batch, from a generator of the run's own.
        self.augment = (Augmenter(cfg.data.augment, torch.Generator().manual_seed(cfg.seed))
                        if cfg.data.augment.active else None)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, labels, self.cfg.optim.label_smoothing, clip=self.cfg.optim.probability_clip)

    def held(self):
        return self.step_fn.held()

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_lr(self.optimizer, self.cfg.optim.lr * lr_factor(self.cfg, global_step, self.steps_per_epoch))
        loss, logits = self.step_fn(x, y)
        if self.ema is not None:
            self._update_ema(global_step)
        return loss, logits

    def _update_ema(self, global_step: int) -> None:
        """ema <- decay * ema + (1 - decay) * weights, batch-norm statistics included.

        The decay warms up as (1 + t) / (10 + t) until it reaches optim.ema: a fixed
        0.999 keeps 23% of the random initial weights after 1,500 steps, and live batch
        statistics under averaged weights do not match them. Averaged statistics follow
        the averaged weights."""
        decay = min(self.cfg.optim.ema, (1 + global_step) / (10 + global_step))
        with torch.no_grad():
            ema, live = list(self.ema.parameters()), list(self.raw.parameters())
            torch._foreach_lerp_(ema, live, 1.0 - decay)
            for mine, theirs in zip(self.ema.buffers(), self.raw.buffers()):
                if mine.is_floating_point():
                    mine.lerp_(theirs, 1.0 - decay)
                else:
                    mine.copy_(theirs)  # num_batches_tracked

    def check_finite(self, state: EpochState) -> None:
        """A non-finite loss stops the run at once (the epoch's state names the step)."""
        bad = int(state.first_bad_step)
        if bad >= 0:
            raise DivergedError(f"training diverged: the loss became NaN or infinite at step {bad + 1}. "
                                "Try a lower learning rate (--lr), gradient-friendlier init or activation")

    def model(self, k: int = 0) -> nn.Module:
        return self.ema if self.ema is not None else self.raw

    def run_state(self, k: int = 0) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.augment is not None:
            state["augment_rng"] = self.augment.generator.get_state()
        return state

    def load(self, saved: Sequence[dict[str, Any]]) -> None:
        (one,) = saved
        self.raw.load_state_dict(one["model"])
        self.optimizer.load_state_dict(one["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(one["ema"])
        if self.augment is not None:
            self.augment.generator.set_state(one["augment_rng"])


class GroupLearner:
    """K same-shaped models as one stacked model (training.stacked), one step for all."""

    ema = augment = None  # the single loop's: group_key never groups runs that use them

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[RunConfig], steps_per_epoch: int, speed: Speed):
        self.cfgs, self.steps_per_epoch, self.k = list(cfgs), steps_per_epoch, len(models)
        stacked = StackedModels(models)
        self.optimizer = StackedOptimizer(stacked.stacked_params, cfgs)
        self.step_fn = make_step(stacked, self.optimizer, self.loss, speed)
        self.forward = self.step_fn.forward
        # Learning rates: each run's base lr (on the device, once) times its schedule's
        # factor, computed once per distinct schedule: 64 runs of one schedule cost one
        # Python call and one kernel per step, not 64 calls and a host-to-device copy.
        device = next(iter(stacked.stacked_params.values())).device
        self.base_lr = torch.tensor([c.optim.lr for c in cfgs], device=device)
        schedules = [json.dumps(c.optim.model_dump(exclude={"lr"}), sort_keys=True) for c in cfgs]
        self.schedule_of = [sorted(set(schedules)).index(s) for s in schedules]
        self.schedule_cfgs = [cfgs[schedules.index(s)] for s in sorted(set(schedules))]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        o = self.cfgs[0].optim
        return cross_entropy(logits, labels, o.label_smoothing, clip=o.probability_clip)

    def held(self):
        return self.step_fn.held()

    def learning_rates(self, global_step: int) -> torch.Tensor:
        """(K,) this step's learning rates: base lr x schedule (optim.lr_factor)."""
        factors = [lr_factor(c, global_step, self.steps_per_epoch) for c in self.schedule_cfgs]
        if len(factors) == 1:
            return self.base_lr * factors[0]
        return self.base_lr * torch.tensor([factors[i] for i in self.schedule_of], device=self.base_lr.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_lr(self.optimizer, self.learning_rates(global_step))
        return self.step_fn(x, y)  # (K,) losses, (K, B, C) logits

    def check_finite(self, state: EpochState) -> None:
        """A run whose loss went bad is recorded at the epoch's end; the others go on."""

    def model(self, k: int) -> nn.Module:
        model = LeNet(self.cfgs[k].model).to(self.base_lr.device)
        model.load_state_dict(self.forward.state_dict_of(k))
        return model

    def run_state(self, k: int) -> dict[str, Any]:
        return {"model": self.forward.state_dict_of(k), "optimizer": self.optimizer.model_state(k)}

    def load(self, saved: Sequence[dict[str, Any]]) -> None:
        for k, one in enumerate(saved):  # refused as a single run refuses weights that do not fit
            LeNet(self.cfgs[k].model).load_state_dict(one["model"])
        with torch.no_grad():
            for k, one in enumerate(saved):
                for name, tensor in self.forward.stacked_params.items():
                    tensor[k].copy_(one["model"][name])
                for name, tensor in self.forward.stacked_buffers.items():
                    tensor[k].copy_(one["model"][name])
        self.optimizer.load_models([one["optimizer"] for one in saved])
