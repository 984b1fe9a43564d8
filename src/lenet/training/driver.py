"""The training loop, top to bottom, for one run or K runs trained together.

    fit(cfgs, recorders, saved):
        data -> models -> speed (resolved once) -> learner (learners.py) -> for each epoch:
            train_one_epoch()  one pass over each run's seeded permutation of its training rows
            evaluate()         validation split (if any) and test set
            epoch_row()        each run's numbers -> its Recorder (metrics, checkpoint, log)
        -> Recorder.finish() (curves.png, model.safetensors) -> one Run per config

A single run is a group of one: K runs that share their layer shapes train as one
stacked model (groups.py), and everything else (interrupt, restore, checkpoints,
the metrics row, divergence) is written once, here. The whole dataset lives on the
device as uint8 and is normalised per batch; the loss and the number of correct
predictions are summed on the device, so a step never waits for the host.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..configuration.run import RunConfig
from ..configuration.fitting import fit_to_data
from ..data.datasets import DeviceData, Normalizer, Split, as_dataset, data_spec
from ..device import resolve_device, seed_everything, synchronize
from ..errors import DivergedError, Interrupted
from ..model.network import LeNet, count_parameters
from ..speed.choice import Speed
from ..speed.forward import finite_check_every
from ..speed.policy import configure_backends, resolve_speed
from ..store import checkpoint as ckpt
from ..store.recorder import DIVERGED, FINISHED, RUNNING, Recorder, read_status
from .groups import group_data
from .learners import GroupLearner, Learner
from .loop import (EpochSettings, EpochState, Position, StopFlag, checkpoint_misfit, checkpoint_state, epoch_row,
                   evaluate, examples_of, format_epoch, partial_epoch, position, train_one_epoch)
from .optim import learning_rate
from .progress import Progress
from .result import Run

EpochHook = Callable[[dict[str, Any]], Any]
EXTRAS_EVERY = 5  # epochs between measurements of the raw-weights and TTA accuracies


def _reading(cfg: RunConfig, path: str | Path) -> RunConfig:
    """``cfg`` reading its data from ``path``, made absolute."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": str(Path(path).expanduser().resolve())})})


def fit(cfgs: Sequence[RunConfig], recs: Sequence[Recorder], saved: Sequence[dict[str, Any]] | None = None, *,
        data: Any = None, on_epoch: EpochHook | None = None, until: EpochHook | None = None,
        speed: Speed | None = None, verbose: bool = False) -> list[Run]:
    """Train ``cfgs`` (one run, or runs that share a groups.group_key) from the start or
    from their checkpoints ``saved``; one Recorder per run (Recorder(None): in memory).
    ``speed``: the choice to compute with (default: resolved here, once)."""
    device = resolve_device(cfgs[0].device)  # a device this machine lacks is said before any data is read
    if isinstance(data, (str, Path)):  # recorded, so resume, eval and predict find it again
        cfgs = [_reading(c, data) for c in cfgs]
        data = None
    elif data is None:  # --data pics: recorded absolute, or eval from another folder would not find it
        cfgs = [_reading(c, c.data.path) if c.data.path else c for c in cfgs]
    dataset = as_dataset(data, cfgs[0])  # read once, before the model: its shape and classes come from it
    cfgs = [fit_to_data(c, dataset) for c in cfgs]
    K, first = len(cfgs), cfgs[0]
    seed_everything(first.seed, first.train.deterministic)
    data = group_data(cfgs, device, dataset)
    steps = 1 if first.train.dry_run else math.ceil(data.n_train / first.train.batch_size)
    epochs = 1 if first.train.dry_run else first.train.epochs
    speed = speed or _resolve(cfgs, device, saved)
    configure_backends(device, speed, first.train.deterministic)
    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)  # each run's initial weights from its own seed
        models.append(LeNet(c.model).to(device))
    learner = Learner(models[0], first, steps, speed) if K == 1 else GroupLearner(models, cfgs, steps, speed)
    shuffles = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
    at = Position()
    if saved is None:
        for c, rec, m in zip(cfgs, recs, models):
            rec.start(c, device, header(c, m, data, device, rec.run_dir, speed, K), speed=speed.to_dict(),
                      **({"trained_with": f"{K} runs at once"} if K > 1 else {}))
            for note in dataset.notes:
                rec.log(f"data: {note}")
    else:
        histories, at = restore(learner, cfgs, recs, saved, shuffles, device)
    say = Recorder(None, verbose)
    if K > 1:
        say.log(f"training {K} runs together on {device} (stacked parameters, grouped convolutions)")
    progress = Progress(first.train.progress if K == 1 else "never", recs[0].verbose or verbose,
                        recs[0].run_dir.name if recs[0].run_dir else first.preset or "run")
    normalize = Normalizer.for_config(first, speed.channels_last)
    diverged = [False] * K
    with StopFlag(recs[0].run_dir) as stop:
        for epoch in range(at.epoch, epochs):
            for k, rec in enumerate(recs):  # each epoch: a run killed outright says how far it got
                if not diverged[k]:
                    rec.status(RUNNING, epoch + 1)
            # The permutations come from saved generator states, so a resumed epoch visits
            # the examples in the very order the interrupted one did.
            for g, s in zip(shuffles, at.shuffle_state or ()):
                g.set_state(s)
            start_shuffles = [g.get_state() for g in shuffles]
            order = torch.stack([torch.randperm(data.n_train, generator=g) for g in shuffles])  # (K, N)
            order = data.order((order[0] if K == 1 else order).to(device))
            state = at.state or EpochState.zeros(() if K == 1 else (K,), device)
            s = EpochSettings(first.train.batch_size, steps, normalize, finite_check_every(device), stop,
                              progress.bar(epoch + 1, epochs, steps, state.step), learner.augment)
            tic = time.perf_counter()
            try:
                train_one_epoch(learner, data.dataset.train, order, state, s, epoch * steps)
            except DivergedError as exc:  # a single run stops at once
                reason = f"{exc}; " + (f"the checkpoint of epoch {epoch} is kept." if epoch > 0
                                       else "no epoch had finished, so there is no checkpoint.")
                recs[0].status(DIVERGED, epoch + 1, reason=reason)
                raise DivergedError(reason) from None
            finally:
                s.bar.close()
            synchronize(device)
            seconds = at.seconds + time.perf_counter() - tic
            if stop.requested:
                interrupt(learner, cfgs, recs, histories, shuffles, epoch, state, start_shuffles, seconds, speed,
                          diverged)
            scores = evaluate_epoch(learner, data, normalize, first, 1 if first.train.dry_run else None, epoch + 1)
            bad = state.first_bad_step.reshape(-1).tolist()
            rows = []
            for k, (c, rec) in enumerate(zip(cfgs, recs)):
                if diverged[k] or bad[k] >= 0:
                    if not diverged[k]:
                        diverged[k] = True
                        reason = (f"training diverged: the loss became NaN or infinite at step {bad[k] + 1}. "
                                  "Try a lower learning rate (--lr).")
                        rec.status(DIVERGED, epoch + 1, reason=reason)
                        rec.log(reason)
                    continue
                # A group's wall time is shared evenly: K runs together took `seconds`.
                row = {**epoch_row(epoch + 1, float(_of(state.loss_sum, k)), int(_of(state.correct, k)), state.seen,
                                   _pair(scores["val"], k), _pair(scores["test"], k),
                                   learning_rate(c, (epoch + 1) * steps - 1, steps), seconds / K, state.seen),
                       **scores["extras"]}
                histories[k].append(row)
                rows.append(row)
                rec.epoch_done(row, histories[k], format_epoch(row, epochs),
                               checkpoint_state(learner.run_state(k), c, histories[k], shuffles[k], epoch + 1,
                                                speed=speed.to_dict()))
                if on_epoch is not None:
                    on_epoch(row)
            at = Position()
            progress.epoch(histories[0])
            if K > 1:
                test = scores["test"][1] if scores["test"] is not None else None
                say.log(f"epoch {epoch + 1}/{epochs}: {K} runs, {seconds:.1f} s, "
                        f"{data.n_train * K / max(seconds, 1e-9):,.0f} examples/s in all"
                        + (f"; test acc {float(test.min()):.4f}..{float(test.max()):.4f}" if test is not None else ""))
            if until is not None and rows and all(until(row) for row in rows):
                recs[0].log(f"stopping after epoch {epoch + 1}: the target is reached")
                break
    return finish(learner, cfgs, recs, histories, data, speed, diverged, device, progress, steps)


def _resolve(cfgs: Sequence[RunConfig], device: torch.device, saved: Sequence[dict[str, Any]] | None) -> Speed:
    """The speed of these runs, as their config and this machine decide (policy.resolve_speed)."""
    first = cfgs[0]
    return resolve_speed(first.speed, device, batch_size=first.train.batch_size,
                         deterministic=first.train.deterministic, batch_norm=first.model.batch_norm,
                         dropout=first.model.dropout > 0, recorded=recorded_speed(first, saved[0] if saved else None),
                         stacked=len(cfgs) > 1)


def _of(values: torch.Tensor, k: int) -> torch.Tensor:
    """Run k's share of a () tensor of one run or a (K,) tensor of K runs."""
    return values if values.dim() == 0 else values[k]


def _pair(scores: tuple[torch.Tensor, torch.Tensor] | None, k: int) -> tuple[float, float] | None:
    return None if scores is None else (float(_of(scores[0], k)), float(_of(scores[1], k)))


def evaluate_epoch(learner: Any, data: DeviceData, normalize: Normalizer, cfg: RunConfig,
                   max_batches: int | None, epoch: int) -> dict[str, Any]:
    """The epoch's validation (if any) and test (loss, accuracy) of every run, of the run's
    model (the moving average with optim.ema, the raw weights' accuracy then as
    *_accuracy_raw), and with train.tta the accuracies under test-time augmentation
    (val_accuracy_tta, test_accuracy_tta): "extras", measured every EXTRAS_EVERY epochs
    and at the last, as together they cost up to 8 plain evaluations. Always float32,
    whatever the training precision: the accuracy reported is the one `lenet eval`,
    predict and the exported model give."""
    def measure(model: nn.Module, split: Split, index: torch.Tensor | None, tta: tuple[str, ...] = ()):
        return evaluate(model, split, normalize, cfg.train.eval_batch_size, index, max_batches, tta=tta)

    model = learner.ema if learner.ema is not None else learner.forward
    val = measure(model, data.dataset.train, data.val_index) if data.val_index is not None else None
    test = measure(model, data.dataset.test, None) if cfg.train.evaluate_test else None
    extras: dict[str, Any] = {}
    out = {"val": val, "test": test, "extras": extras}
    if epoch % EXTRAS_EVERY and epoch != cfg.train.epochs:
        return out
    splits = [("val", data.dataset.train, data.val_index)] if data.val_index is not None else []
    splits += [("test", data.dataset.test, None)] if cfg.train.evaluate_test else []
    for name, split, index in splits:
        if learner.ema is not None:
            extras[f"{name}_accuracy_raw"] = float(measure(learner.forward, split, index)[1])
        if cfg.train.tta:  # on the validation split too, so choosing TTA never needs the test set
            extras[f"{name}_accuracy_tta"] = float(measure(model, split, index, tta_kinds(cfg))[1])
    return out


def tta_kinds(cfg: RunConfig) -> tuple[str, ...]:
    """The test-time views of a dataset: shifts always; mirror images where the training
    flipped, or could have (not MNIST, whose digits are not mirror-symmetric)."""
    flips = data_spec(cfg).flips or cfg.data.augment.force_flip
    return ("flip", "shift") if flips else ("shift",)


def header(cfg: RunConfig, model: nn.Module, data: DeviceData, device: torch.device, run_dir: Path | None,
           speed: Speed, k: int = 1) -> str:
    if k > 1:
        return (f"run {run_dir}  ({cfg.preset or 'custom'} recipe, {cfg.model.name}, {count_parameters(model):,} "
                f"parameters, trained with {k - 1} other run(s), {speed.precision})")
    return (f"run {run_dir or '(in memory)'}  ({cfg.preset or 'custom'} recipe, {cfg.model.name}, "
            f"{count_parameters(model):,} parameters, {data.dataset.spec.name}, {data.n_train:,} train / "
            f"{data.n_val:,} val / {len(data.dataset.test):,} test, {device}, {speed.describe(cfg.train.batch_size)})")


def recorded_speed(cfg: RunConfig, saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The speed a checkpoint's run used: its record, or for a checkpoint from before
    lenet 0.2 what its config said then (no auto: fp32 unless --amp, no channels-last)."""
    if saved is None:
        return None
    return saved.get("speed") or {"precision": "bf16" if cfg.speed.amp else "fp32",
                                  "channels_last": bool(cfg.speed.channels_last), "reason": "lenet 0.1 checkpoint"}


def finish(learner: Any, cfgs: Sequence[RunConfig], recs: Sequence[Recorder], histories: list[list[dict[str, Any]]],
           data: DeviceData, speed: Speed, diverged: list[bool], device: torch.device, progress: Progress,
           steps: int) -> list[Run]:
    """Each run's curves and model file, its closing lines, and its Run."""
    names = data.dataset.class_names
    runs = []
    for k, (c, rec) in enumerate(zip(cfgs, recs)):
        model = learner.model(k)
        if not diverged[k]:
            extra = {"dry_run": True} if c.train.dry_run else {"trained_with": len(cfgs)} if len(cfgs) > 1 else {}
            rec.finish(model, c, names, histories[k], speed.to_dict(), **extra)
            rec.log(closing_lines(histories[k], device, rec.run_dir))
        runs.append(Run(c, model, histories[k], rec.run_dir, DIVERGED if diverged[k] else FINISHED, names,
                        speed.to_dict()))
    progress.finish(f"{len(histories[0])} epoch(s) of {steps} batches in "
                    f"{sum(r['epoch_seconds'] for r in histories[0]):.1f} s of training")
    return runs


def closing_lines(history: list[dict[str, Any]], device: torch.device, run_dir: Path | None) -> str:
    lines = []
    if history:
        last = history[-1]
        total_seconds = sum(r["epoch_seconds"] for r in history)
        total_examples = sum(examples_of(r) for r in history)
        held_out = (f"test acc {last['test_accuracy']:.3f}" if last.get("test_accuracy") is not None
                    else f"val acc {last['val_accuracy']:.3f}" if last.get("val_accuracy") is not None
                    else "no test evaluation")
        lines += [f"loss {last['train_loss']:.3f}, train acc {last['train_accuracy']:.3f}, {held_out}",
                  f"{total_examples / max(total_seconds, 1e-9):.1f} examples/sec on {device}"]
    if run_dir is not None:
        lines.append(f"saved {run_dir}/: model.safetensors, metrics.jsonl, metrics.csv, curves.png, config.yaml")
    return "\n".join(lines)


# --------------------------------------------------------------------------- checkpoints


def interrupt(learner: Any, cfgs: Sequence[RunConfig], recs: Sequence[Recorder],
              histories: list[list[dict[str, Any]]], shuffles: list[torch.Generator], epoch: int, state: EpochState,
              start_shuffles: list[torch.Tensor], seconds: float, speed: Speed, diverged: list[bool]) -> None:
    """Ctrl-C: every run saves the epoch in progress (at a step boundary), then exit code 130."""
    for k, (c, rec) in enumerate(zip(cfgs, recs)):
        if diverged[k]:
            continue
        if state.step == 0:
            # Stopped before this epoch's first step (Ctrl-C during the previous evaluation
            # or checkpoint): save the epoch boundary it is, with the shuffle generator from
            # before this epoch's permutation was drawn, else the resumed epoch would draw
            # the next epoch's permutation.
            shuffles[k].set_state(start_shuffles[k])
        partial = partial_epoch(_of(state.loss_sum, k), _of(state.correct, k), state.seen, start_shuffles[k], seconds)
        rec.interrupted(checkpoint_state(learner.run_state(k), c, histories[k], shuffles[k], epoch, state.step,
                                         partial, speed=speed.to_dict()), epoch + 1, state.step)
    then = (f"lenet train --resume {recs[0].run_dir}" if len(cfgs) == 1 else
            "the same lenet sweep command (or lenet train --resume RUN_DIR for one run)")
    raise Interrupted(f"interrupted at epoch {epoch + 1}, step {state.step}; "
                      f"checkpoint{'s' if len(cfgs) > 1 else ''} saved. Continue with: {then}")


def restore(learner: Any, cfgs: Sequence[RunConfig], recs: Sequence[Recorder], saved: Sequence[dict[str, Any]],
            shuffles: list[torch.Generator], device: torch.device) -> tuple[list[list[dict[str, Any]]], Position]:
    """Weights, optimiser states, random states and the position of every run; a checkpoint
    that does not fit its run's config is a RunError that says so, not a traceback."""
    histories, positions = [], []
    for rec, one, shuffle in zip(recs, saved, shuffles):
        with checkpoint_misfit(rec.run_dir):
            ckpt.set_rng_state(one["rng"], shuffle)
            history, at = position(one, device)
        rec.rewrite_history(history)
        others = f", with {len(saved) - 1} other run(s)" if len(saved) > 1 else ""
        rec.log(f"resuming {rec.run_dir} at epoch {at.epoch + 1}"
                + (f", step {at.state.step + 1}" if at.state else "") + others)
        if read_status(rec.run_dir).get("status") == FINISHED or at.epoch >= cfgs[0].train.epochs:
            rec.log("nothing to do: the run had already finished")
        histories.append(history)
        positions.append(at)
    # One global generator drives dropout: every run of a group saved the same state.
    ckpt.set_rng_state(saved[0]["rng"], shuffles[0])
    with checkpoint_misfit(recs[0].run_dir):
        learner.load(saved)
    for c, rec, at in zip(cfgs, recs, positions):
        rec.open_scalars(c, at.epoch + 1)
    at = positions[0]
    at.shuffle_state = [p.shuffle_state for p in positions] if at.state is not None else None
    if at.state is not None and len(positions) > 1:  # stopped mid-epoch: the group's sums
        at.state = EpochState(torch.stack([p.state.loss_sum for p in positions]),
                              torch.stack([p.state.correct for p in positions]), at.state.seen, at.state.step,
                              torch.full((len(positions),), -1, device=device))
    return histories, at
