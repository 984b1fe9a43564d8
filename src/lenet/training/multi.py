"""Many LeNets at once: runs whose layers have the same shapes train together.

One LeNet-5 step is a few hundred small kernels; on a GPU each leaves most of the
device idle, and on a CPU each pays Python and dispatch overhead. Runs that differ
only in seed, learning rate, schedule, momentum, weight decay or initialisation
share every tensor shape, so we stack their parameters along a new leading
dimension (torch.func.stack_module_state) and run one forward and backward for
all K of them, convolutions as channel groups and dense layers as batched matrix
products: (K, B, 1, 28, 28) in, (K, B, classes) out.

The epoch, the evaluation, the metrics row and the run files are the single-run
loop's own (``loop.train_one_epoch``, ``loop.evaluate``, ``loop.epoch_row``,
``Recorder``): only the step differs. Each run keeps its identity: model k is
initialised from its own seed exactly as ``train`` would, sees its own shuffling
order and validation split, and gets its own optimiser hyper-parameters, so its
result equals a separate run up to floating-point rounding. Each run's checkpoint.pt
is a single run's checkpoint (its weights, its optimiser state in torch.optim's
format, its random states), so an interrupted group resumes together
(``resume_many``) or each run alone (``lenet train --resume``).

Speed switches: ``--amp`` and ``--deterministic`` apply as in a single run;
``--channels-last``, ``--compile``, ``--cuda-graphs`` and ``--micro-batch`` do not fit
the stacked step and are refused (a sweep trains such runs one by one instead).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..store import checkpoint as ckpt
from ..data.datasets import DeviceData, Normalizer, prepare_data, stratified_indices
from ..errors import Interrupted, UsageError
from .loop import (EpochSettings, EpochState, Position, StopFlag, checkpoint_misfit, checkpoint_state, epoch_row,
                   evaluate, format_epoch, partial_epoch, position, train_one_epoch)
from ..model.network import LeNet, count_parameters
from .optim import learning_rate, lr_factor
from ..store.recorder import DIVERGED, FINISHED, RUNNING, Recorder
from ..configuration.build import FLAGS_BY_NAME, flatten
from ..configuration.run import RunConfig
from ..store.runs import create_run_dir, default_run_name, run_lock
from ..speed.policy import (Speed, autocast, configure_backends, resolve_device, resolve_speed, seed_everything,
                           synchronize)
from .stacked import StackedModels, StackedOptimizer
from .driver import Run, recorded_speed

# Fields that may differ between runs trained together: none changes a tensor shape
# or the computation graph, only values (initial weights, data order, update sizes).
VARYING = {
    "name", "out", "seed",
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.schedule", "optim.step_epochs",
    "optim.gamma", "optim.warmup_fraction", "model.init", "model.name",
}
# Switches the stacked step does not honour: torch.compile and CUDA graphs capture one
# model's graph, channels-last has no layout for the (K, B, C, H, W) batch, and the
# stacked step takes each batch whole and its own layers (a single run's micro-batches,
# halves and fused layers are automatic on the CPU; a group simply has none).
REFUSED_SWITCHES = ("channels_last", "compile", "cuda_graphs", "micro_batch", "fused_layers", "parallel_halves")


def group_key(cfg: RunConfig) -> str | None:
    """Runs with equal keys can train together; None for runs that cannot batch at all."""
    if cfg.model.batch_norm or cfg.train.dry_run or any(getattr(cfg.train, s) for s in REFUSED_SWITCHES) \
            or cfg.data.augment.active or cfg.optim.ema or cfg.train.tta:
        # Augmentation, weight averaging and test-time augmentation are the single loop's.
        # BN keeps running statistics per model, which the stacked step does not.
        return None
    flat = flatten(cfg.to_dict())
    return json.dumps({k: v for k, v in flat.items() if k not in VARYING}, sort_keys=True)


def groups(cfgs: Sequence[RunConfig]) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by group_key; unbatchable runs are groups of one."""
    by_key: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        key = group_key(cfg)
        if key is None:
            out.append([i])
        else:
            by_key.setdefault(key, []).append(i)
    return list(by_key.values()) + out


def _check_group(cfgs: Sequence[RunConfig]) -> None:
    for cfg in cfgs:
        on = [s for s in REFUSED_SWITCHES if getattr(cfg.train, s)]
        if on:
            name = f"--{on[0].replace('_', '-')}" if on[0] in FLAGS_BY_NAME else f"train.{on[0]}"
            raise UsageError(f"{name} does not work for runs trained together (one stacked "
                             "step for all); train such runs one by one (lenet sweep --separately)")
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise UsageError("runs trained together must differ only in " + ", ".join(sorted(VARYING))
                         + " and use no batch norm and no dry run")


class GroupLearner:
    """The step of K models at once; the loop's other half (loop.train_one_epoch)."""

    def __init__(self, models: Sequence[nn.Module], cfgs: Sequence[RunConfig], steps_per_epoch: int, speed: Speed):
        self.cfgs, self.steps_per_epoch, self.speed, self.amp = list(cfgs), steps_per_epoch, speed, speed.bf16
        self.forward = StackedModels(models)
        self.optimizer = StackedOptimizer(self.forward.stacked_params, cfgs)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfgs[0].optim.label_smoothing, reduction="none")
        # Learning rates: each run's base lr (on the device, once) times its schedule's
        # factor, computed once per distinct schedule: 64 runs of one schedule cost one
        # Python call and one kernel per step, not 64 calls and a host-to-device copy.
        device = next(iter(self.forward.stacked_params.values())).device
        self.base_lr = torch.tensor([c.optim.lr for c in cfgs], device=device)
        schedules = [json.dumps(c.optim.model_dump(exclude={"lr"}), sort_keys=True) for c in cfgs]
        self.schedule_of = [sorted(set(schedules)).index(s) for s in schedules]
        self.schedule_cfgs = [cfgs[schedules.index(s)] for s in sorted(set(schedules))]

    def learning_rates(self, global_step: int) -> torch.Tensor:
        """(K,) this step's learning rates: base lr x schedule (optim.lr_factor)."""
        factors = [lr_factor(c, global_step, self.steps_per_epoch) for c in self.schedule_cfgs]
        if len(factors) == 1:
            return self.base_lr * factors[0]
        return self.base_lr * torch.tensor([factors[i] for i in self.schedule_of], device=self.base_lr.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.forward.k
        with autocast(x.device, self.amp):
            logits = self.forward(x)  # (K, B, C)
        losses = self.loss_fn(logits.flatten(0, 1).float(), y.flatten()).view(k, -1).mean(1)  # (K,)
        params = list(self.forward.stacked_params.values())
        # Models are independent, so the gradient of the sum is each model's own gradient.
        grads = torch.autograd.grad(losses.sum(), params)
        self.optimizer.step(grads, self.learning_rates(global_step))
        return losses.detach(), logits.detach()

    def check_finite(self, state: EpochState) -> None:
        """A model whose loss went bad is recorded at the epoch's end; the others go on."""


# --------------------------------------------------------------------------- training a group


def train_many(cfgs: Sequence[RunConfig], exist_ok: bool = False, verbose: bool = False) -> list[Run]:
    """Train runs that share a group_key together, each into ``cfg.out/cfg.name``;
    one Run per config, in order."""
    cfgs = list(cfgs)
    _check_group(cfgs)
    run_dirs = [create_run_dir(Path(c.out), c.name or default_run_name(c), exist_ok) for c in cfgs]
    with contextlib.ExitStack() as locks:
        for d in run_dirs:  # one writer per run, as in train()
            locks.enter_context(run_lock(d))
        cfgs = [c.model_copy(update={"name": d.name}) for c, d in zip(cfgs, run_dirs)]
        return fit_many(cfgs, [Recorder(d) for d in run_dirs], None, verbose)


def resume_many(run_dirs: Sequence[str | Path], verbose: bool = False) -> list[Run]:
    """Continue runs interrupted while training together, together again. Their
    checkpoints must be at the same epoch and step (they are, when saved together)."""
    run_dirs = [Path(d) for d in run_dirs]
    with contextlib.ExitStack() as locks:
        for d in run_dirs:
            locks.enter_context(run_lock(d))
        recorders = [Recorder(d) for d in run_dirs]
        states = [r.resume_state() for r in recorders]
        cfgs, saved = [s[0] for s in states], [s[1] for s in states]
        _check_group(cfgs)
        positions = {(int(s.get("epoch", -1)), int(s.get("step", -1))) for s in saved}
        if len(positions) != 1:
            raise UsageError("these runs stopped at different points (epoch, step): "
                             f"{sorted(positions)}; resume each on its own")
        return fit_many(cfgs, recorders, saved, verbose)


def group_data(cfgs: Sequence[RunConfig], device: torch.device, dataset: Any = None) -> DeviceData:
    """The shared dataset, with each run's own validation split as (K, N) rows."""
    first = cfgs[0]
    data = prepare_data(first.model_copy(update={"data": first.data.model_copy(update={"val_split": 0.0})}), device,
                        dataset)
    if first.data.val_split == 0:
        return data
    labels = data.dataset.train.labels.cpu()
    splits = [stratified_indices(labels, first.data.val_split, c.seed) for c in cfgs]  # each run's own seed
    return DeviceData(data.dataset, torch.stack([s[0] for s in splits]).to(device),
                      torch.stack([s[1] for s in splits]).to(device))


def fit_many(cfgs: list[RunConfig], recs: list[Recorder], saved: list[dict[str, Any]] | None,
             verbose: bool, data: Any = None) -> list[Run]:
    """loop.train_one_epoch and loop.evaluate over K models; one Recorder per run
    (Recorder(None): in memory). ``data``: a Dataset already loaded, as train's."""
    K, first = len(cfgs), cfgs[0]
    seed_everything(first.seed, first.train.deterministic)
    device = resolve_device(first.device)
    data = group_data(cfgs, device, data)
    steps = math.ceil(data.n_train / first.train.batch_size)
    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)  # the same draw of initial weights as train()'s seed_everything
        models.append(LeNet(c.model).to(device))
    shuffles = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    at = Position()
    # The stacked step takes none of REFUSED_SWITCHES, which the CPU would otherwise
    # choose by itself (layout, micro-batches, halves, fused layers); precision as a run's.
    off = {s: 0 if s == "micro_batch" else False for s in REFUSED_SWITCHES}
    speed = resolve_speed(first.train.model_copy(update=off), device,
                          recorded_speed(first, saved[0] if saved else None))
    configure_backends(device, speed, False, first.train.deterministic)
    if saved is None:
        for c, rec, m in zip(cfgs, recs, models):
            rec.start(c, device, f"run {rec.run_dir}  ({c.preset or 'custom'} recipe, {c.model.name}, "
                                 f"{count_parameters(m):,} parameters, trained with {K - 1} other run(s), "
                                 f"{speed.precision})", trained_with=f"{K} runs at once", speed=speed.to_dict())
        learner = GroupLearner(models, cfgs, steps, speed)
    else:
        learner, histories, at = _restore_group(models, cfgs, recs, saved, shuffles, steps, device, speed)
        for c, rec in zip(cfgs, recs):
            rec.open_scalars(c, at.epoch + 1)
    normalize = Normalizer.for_config(first)
    diverged = [False] * K
    say = Recorder(None, verbose)
    say.log(f"training {K} runs together on {device} (stacked parameters, grouped convolutions)")
    with StopFlag(recs[0].run_dir) as stop:
        for epoch in range(at.epoch, first.train.epochs):
            for k, rec in enumerate(recs):  # each epoch: a run killed outright says how far it got
                if not diverged[k]:
                    rec.status(RUNNING, epoch + 1)
            if at.shuffle_state is not None:
                for g, s in zip(shuffles, at.shuffle_state):
                    g.set_state(s)
            start_shuffles = [g.get_state() for g in shuffles]
            # (K, N_train): each run's own permutation of its own training rows
            order = data.order(torch.stack([torch.randperm(data.n_train, generator=g) for g in shuffles]).to(device))
            state = at.state or EpochState.zeros((K,), device)
            s = EpochSettings(first.train.batch_size, steps, normalize, steps, stop)
            tic = time.perf_counter()
            train_one_epoch(learner, data.dataset.train, order, state, s, epoch * steps)
            synchronize(device)
            seconds = at.seconds + time.perf_counter() - tic
            if stop.requested:
                _interrupt_group(learner, cfgs, recs, histories, shuffles, epoch, state, start_shuffles, seconds,
                                 diverged)
            bs = first.train.eval_batch_size
            # Evaluated in float32, as a single run is (training.evaluate_split).
            val = (evaluate(learner.forward, data.dataset.train, normalize, bs, data.val_index)
                   if data.val_index is not None else None)
            test = evaluate(learner.forward, data.dataset.test, normalize, bs)
            bad = state.first_bad_step.tolist()
            for k, (c, rec) in enumerate(zip(cfgs, recs)):
                if diverged[k]:
                    continue
                if bad[k] >= 0:
                    diverged[k] = True
                    reason = (f"training diverged: the loss became NaN or infinite at step {bad[k] + 1}. "
                              "Try a lower learning rate (--lr).")
                    rec.status(DIVERGED, epoch + 1, reason=reason)
                    rec.log(reason)
                    continue
                # The group's wall time is shared evenly: K runs together took `seconds`.
                row = epoch_row(epoch + 1, float(state.loss_sum[k]), int(state.correct[k]), state.seen,
                                (float(val[0][k]), float(val[1][k])) if val else None,
                                (float(test[0][k]), float(test[1][k])),
                                learning_rate(c, (epoch + 1) * steps - 1, steps), seconds / K, state.seen)
                histories[k].append(row)
                rec.epoch_done(row, histories[k], format_epoch(row, c.train.epochs),
                               _checkpoint(learner, k, c, histories[k], shuffles[k], epoch + 1))
            at = Position()
            say.log(f"epoch {epoch + 1}/{first.train.epochs}: {K} runs, {seconds:.1f} s, "
                    f"{data.n_train * K / max(seconds, 1e-9):,.0f} examples/s in all; "
                    f"test acc {float(test[1].min()):.4f}..{float(test[1].max()):.4f}")
    runs = []
    for k, (c, rec) in enumerate(zip(cfgs, recs)):
        model = LeNet(c.model)
        model.load_state_dict({n: t.cpu() for n, t in learner.forward.state_dict_of(k).items()})
        if not diverged[k]:
            rec.finish(model, c, data.dataset.class_names, histories[k], speed.to_dict(), trained_with=K)
        runs.append(Run(c, model, histories[k], rec.run_dir, DIVERGED if diverged[k] else FINISHED,
                        data.dataset.class_names, speed.to_dict()))
    return runs


def _model_k(learner: GroupLearner, k: int) -> nn.Module:
    model = LeNet(learner.cfgs[k].model).to(next(iter(learner.forward.stacked_params.values())).device)
    model.load_state_dict(learner.forward.state_dict_of(k))
    return model


def _checkpoint(learner: GroupLearner, k: int, cfg: RunConfig, history: list[dict[str, Any]],
                shuffle: torch.Generator, epoch: int, step: int = 0,
                partial: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run k's checkpoint, in the single-run format (loop.checkpoint_state)."""
    model = _model_k(learner, k)
    return checkpoint_state(model.state_dict(), learner.optimizer.torch_state(k, model), cfg, history, shuffle,
                            epoch, step, partial, speed=learner.speed.to_dict())


def _interrupt_group(learner: GroupLearner, cfgs: list[RunConfig], recs: list[Recorder],
                     histories: list[list[dict[str, Any]]], shuffles: list[torch.Generator], epoch: int,
                     state: EpochState, start_shuffles: list[torch.Tensor], seconds: float,
                     diverged: list[bool]) -> None:
    """Ctrl-C: every run of the group saves the epoch in progress, then exit code 130."""
    for k, (c, rec) in enumerate(zip(cfgs, recs)):
        if diverged[k]:
            continue
        if state.step == 0:
            shuffles[k].set_state(start_shuffles[k])
        partial = partial_epoch(state.loss_sum[k], state.correct[k], state.seen, start_shuffles[k], seconds)
        rec.interrupted(_checkpoint(learner, k, c, histories[k], shuffles[k], epoch, state.step, partial),
                        epoch + 1, state.step)
    raise Interrupted(f"interrupted at epoch {epoch + 1}, step {state.step}; checkpoints saved. Continue with "
                      "the same lenet sweep command (or lenet train --resume RUN_DIR for one run)")


def _restore_group(models: list[nn.Module], cfgs: list[RunConfig], recs: list[Recorder],
                   saved: list[dict[str, Any]], shuffles: list[torch.Generator], steps: int,
                   device: torch.device, speed: Speed) -> tuple[GroupLearner, list[list[dict[str, Any]]], Position]:
    """Weights, optimiser states, random states and the shared position of a group."""
    histories, positions = [], []
    for model, rec, state, shuffle in zip(models, recs, saved, shuffles):
        with checkpoint_misfit(rec.run_dir):
            model.load_state_dict(state["model"])
            ckpt.set_rng_state(state["rng"], shuffle)
            history, at = position(state, "cpu")
        rec.rewrite_history(history)
        rec.log(f"resuming {rec.run_dir} at epoch {at.epoch + 1}" + (f", step {at.state.step + 1}" if at.state else "")
                + f", with {len(models) - 1} other run(s)")
        histories.append(history)
        positions.append(at)
    # One global RNG drives the group's dropout: every run saved the same state.
    ckpt.set_rng_state(saved[0]["rng"], shuffles[0])
    learner = GroupLearner(models, cfgs, steps, speed)
    with checkpoint_misfit(recs[0].run_dir):
        learner.optimizer.load([s["optimizer"] for s in saved], models)
    at = positions[0]
    if at.state is not None:  # stopped mid-epoch: the group's sums, each run's shuffle state
        at.state = EpochState(torch.stack([p.state.loss_sum for p in positions]).to(device),
                              torch.stack([p.state.correct for p in positions]).to(device),
                              at.state.seen, at.state.step, torch.full((len(models),), -1, device=device))
        at.shuffle_state = [p.shuffle_state for p in positions]
    return learner, histories, at
