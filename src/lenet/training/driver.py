"""The training loop, top to bottom: data on the device, batches by index.

    train(cfg) / resume(run_dir) -> fit():
        data -> model -> Learner (optimiser, loss, speed switches) -> for each epoch:
            train_one_epoch()  one pass over a seeded permutation of the training set
            evaluate()         validation split (if any) and test set
            epoch_row()        the epoch's numbers -> Recorder (metrics, checkpoint, log)
        -> Recorder.finish() (curves.png, model.safetensors) -> Run

The whole dataset lives on the device as uint8 (47 MB for 60k images) and is
normalised per batch; the loss and the number of correct predictions are summed
on the device, so a step never waits for the host (one sync per epoch).
train_one_epoch() and evaluate() live in ``loop``, shared with ``multi``, which
trains K same-shaped models at once through the same code.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..store import checkpoint as ckpt
from ..store.models import save_model
from ..data.augment import Augmenter
from ..data.datasets import DeviceData, Normalizer, Split, prepare_data
from ..errors import DivergedError, Interrupted, UsageError
from ..speed.fused import fused_forward
from ..speed.halves import in_halves, threads_for
from .loop import (NAN_CHECK_EVERY_CUDA, EpochSettings, EpochState, Position, StopFlag, checkpoint_misfit,
                   checkpoint_state, epoch_row, evaluate, format_epoch, partial_epoch, position, train_one_epoch)
from ..model.network import LeNet, count_parameters
from .optim import learning_rate, make_optimizer, set_lr
from .progress import Progress
from ..store.recorder import DIVERGED, FINISHED, RUNNING, Recorder, read_status
from ..configuration.run import RunConfig
from ..store.runs import create_run_dir, default_run_name, remove_failed_start, run_lock
from ..speed.policy import (Speed, autocast, configure_backends, resolve_device, resolve_speed, seed_everything,
                           synchronize)

EpochHook = Callable[[dict[str, Any]], Any]
EXTRAS_EVERY = 5  # epochs between measurements of the raw-weights and TTA accuracies


# --------------------------------------------------------------------------- one epoch


class Learner:
    """One model, its optimiser and its loss: what a training step changes.

    ``forward`` is the module called for forward passes, with the speed switches
    applied (channels-last, fused layers, torch.compile, CUDA graphs); it shares its parameters with
    ``model``, from which weights are saved, so a compiled run's files carry no
    "_orig_mod." prefix.
    """

    def __init__(self, model: nn.Module, cfg: RunConfig, device: torch.device, steps_per_epoch: int, speed: Speed):
        t = cfg.train
        if t.cuda_graphs and device.type != "cuda":
            raise UsageError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.cfg, self.steps_per_epoch, self.amp = model, cfg, steps_per_epoch, speed.bf16
        self.micro_batch, self.halves = speed.micro_batch, speed.parallel_halves
        forward = fused_forward(model) if speed.fused_layers else model
        self.forward = torch.compile(forward) if t.compile else forward
        self.optimizer = make_optimizer(model, cfg, graphable=t.cuda_graphs)
        # Label smoothing spreads eps of the target mass over all classes (Szegedy et al. 2016).
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        self.graphed = None
        if t.cuda_graphs:  # the whole step as one CUDA graph (graphs.py)
            from ..speed.graphs import CudaGraphStep

            self.graphed = CudaGraphStep(model, self.forward, self.optimizer, self.loss_fn, speed.bf16)
        # optim.ema: the weights' moving average, which becomes the run's model.
        self.ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.optim.ema > 0 else None
        # data.augment: random changes to each batch, from a generator of the run's own.
        self.augment = (Augmenter(cfg.data.augment, torch.Generator().manual_seed(cfg.seed))
                        if cfg.data.augment.active else None)

    @property
    def final_model(self) -> nn.Module:
        """The model the run reports and saves: the moving average where there is one."""
        return self.ema if self.ema is not None else self.model

    def _update_ema(self, global_step: int) -> None:
        """ema <- decay * ema + (1 - decay) * weights, batch-norm statistics included.

        The decay warms up as (1 + t) / (10 + t) until it reaches optim.ema: a fixed
        0.999 keeps 23% of the random initial weights after 1,500 steps, and live batch
        statistics under averaged weights do not match them (measured on MNIST: 0.18
        validation accuracy at epoch 7 against 0.99 for the live weights). Averaged
        statistics follow the averaged weights."""
        decay = min(self.cfg.optim.ema, (1 + global_step) / (10 + global_step))
        with torch.no_grad():
            ema, live = list(self.ema.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(ema, live, 1.0 - decay)
            for mine, theirs in zip(self.ema.buffers(), self.model.buffers()):
                if mine.is_floating_point():
                    mine.lerp_(theirs, 1.0 - decay)
                else:
                    mine.copy_(theirs)  # num_batches_tracked

    def checkpoint_extra(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the model and optimiser to continue this learner."""
        extra: dict[str, Any] = {}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        if self.augment is not None:
            extra["augment_rng"] = self.augment.generator.get_state()
        return extra

    def load_extra(self, saved: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        if self.augment is not None:
            self.augment.generator.set_state(saved["augment_rng"])

    def load_optimizer(self, state: dict[str, Any]) -> None:
        """A checkpoint's optimiser state; a graphable optimiser keeps its lr on the device."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(lr, torch.Tensor):
                group["lr"] = lr

    def threads(self) -> contextlib.AbstractContextManager:
        """The intra-op threads an epoch of steps takes: in halves, half of torch's for
        this thread and half for the worker (halves.halved_threads); else torch's own."""
        return threads_for(self.halves)

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_lr(self.optimizer, learning_rate(self.cfg, global_step, self.steps_per_epoch))
        if self.graphed is not None:
            loss, logits = self.graphed(x, y)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits = self._forward_backward(x, y)
            self.optimizer.step()
        if self.ema is not None:
            self._update_ema(global_step)
        return loss.detach(), logits.detach()

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its logits, its gradients accumulated. With
        micro-batches, part by part, and with halves, both halves at once (halves.py):
        each part's mean loss weighted by its share of the batch, so the gradients sum to
        the whole batch's (up to rounding)."""
        def part(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with autocast(x.device, self.amp):
                logits = self.forward(xs)
            loss = self.loss_fn(logits.float(), ys)  # the loss in float32 whatever the forward ran in
            if len(ys) < len(y):
                loss = loss * (len(ys) / len(y))
            loss.backward()
            return loss.detach(), logits.detach()

        if self.halves:
            results = [r for r in in_halves(part, x, y) if r is not None]
        else:
            results = [part(xs, ys) for xs, ys in zip(x.split(self.micro_batch or len(x)),
                                                        y.split(self.micro_batch or len(x)))]
        if len(results) == 1:
            return results[0]
        return torch.stack([loss for loss, _ in results]).sum(), torch.cat([logits for _, logits in results])

    def check_finite(self, state: EpochState) -> None:
        bad = int(state.first_bad_step)
        if bad >= 0:
            raise DivergedError(f"training diverged: the loss became NaN or infinite at step {bad + 1}. "
                                "Try a lower learning rate (--lr), gradient-friendlier init or activation")


# --------------------------------------------------------------------------- a run


@dataclass
class Run:
    """What lenet.train returns: the trained model and everything known about its training."""

    config: RunConfig
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (metrics.jsonl)
    run_dir: Path | None = None  # None: trained in memory
    status: str = FINISHED
    class_names: tuple[str, ...] = ()
    speed: dict[str, Any] = field(default_factory=dict)  # the precision and layout it ran with, and why

    @property
    def test_accuracy(self) -> float | None:
        return self.history[-1].get("test_accuracy") if self.history else None

    def plot(self, title: str | None = None):
        """The chapter's curves (train loss, train acc, [val acc], test acc) as a matplotlib Figure."""
        from ..use.figures import curves_figure

        label = self.run_dir.name if self.run_dir else (self.config.name or self.config.preset or "run")
        return curves_figure([(label, self.history)], title=title or label)

    def save(self, path: str | Path) -> Path:
        """The model as a .safetensors file that lenet.load, predict, serve and export read."""
        return save_model(Path(path), self.model, self.config, self.class_names,
                               extra={"test_accuracy": self.test_accuracy, "epochs": len(self.history),
                                      "speed": self.speed})

    def evaluate(self, **options: Any):
        """lenet.evaluate(this run): see lenet.use.evaluation.evaluate."""
        from ..use.evaluation import evaluate as evaluate_run

        return evaluate_run(self, **options)

    def __repr__(self) -> str:
        where = str(self.run_dir) if self.run_dir else "in memory"
        acc = f", test accuracy {self.test_accuracy:.4f}" if self.test_accuracy is not None else ""
        return f"Run({where}, {self.config.model.name}, {len(self.history)} epoch(s), {self.status}{acc})"


def train(cfg: RunConfig, out: str | Path | None = None, *, data: Any = None, on_epoch: EpochHook | None = None,
          until: EpochHook | None = None, exist_ok: bool = False, verbose: bool = False) -> Run:
    """Train ``cfg``: in memory (writes nothing, prints nothing unless ``verbose``), or
    with ``out`` into the run directory ``out/<cfg.name or a dated name>`` that
    ``resume`` continues. ``data``: a Dataset or {"train": (images, labels), "test": ...}
    (default: ``cfg.data.dataset``, found as the CLI finds it). ``on_epoch(row)`` runs
    after each epoch; training ends early, as finished, once ``until(row)`` is true.
    The run directory is locked meanwhile: a second writer gets RunBusy instead."""
    if out is None:
        return fit(cfg, Recorder(None, verbose), data=data, on_epoch=on_epoch, until=until)
    run_dir = create_run_dir(Path(out), cfg.name or default_run_name(cfg), exist_ok)
    with run_lock(run_dir):
        cfg = cfg.model_copy(update={"name": run_dir.name, "out": str(out)})
        recorder = Recorder(run_dir, verbose)
        try:
            with recorder.failures_recorded():
                return fit(cfg, recorder, data=data, on_epoch=on_epoch, until=until)
        except BaseException:
            remove_failed_start(run_dir)  # data missing, say: no empty folder that looks like a run
            raise


def resume(run_dir: str | Path, *, data: Any = None, on_epoch: EpochHook | None = None,
           until: EpochHook | None = None, verbose: bool = False) -> Run:
    """Continue an interrupted run exactly (on the CPU: bitwise the uninterrupted run)."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        recorder = Recorder(run_dir, verbose)
        cfg, saved = recorder.resume_state()
        with recorder.failures_recorded():
            return fit(cfg, recorder, saved, data=data, on_epoch=on_epoch, until=until)


def fit(cfg: RunConfig, rec: Recorder, saved: dict[str, Any] | None = None, *, data: Any = None,
        on_epoch: EpochHook | None = None, until: EpochHook | None = None) -> Run:
    """The loop itself, for a new run (``saved`` None) or a checkpoint to continue."""
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.device)
    with rec.plotting_imported_meanwhile():
        data = prepare_data(cfg, device, data)
    steps = 1 if cfg.train.dry_run else math.ceil(data.n_train / cfg.train.batch_size)
    epochs = 1 if cfg.train.dry_run else cfg.train.epochs
    speed = resolve_speed(cfg.train, device, recorded_speed(cfg, saved), cfg.model.batch_norm, cfg.model.dropout > 0)
    configure_backends(device, speed, cfg.train.cuda_graphs, cfg.train.deterministic)
    learner = Learner(LeNet(cfg.model).to(device), cfg, device, steps, speed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []
    at = Position()
    if saved is None:
        rec.start(cfg, device, header(cfg, learner.model, data, device, rec.run_dir, speed), speed=speed.to_dict())
    else:
        history, at = restore(saved, learner, shuffle, device, rec)
    progress = Progress(cfg.train.progress, rec.verbose, rec.run_dir.name if rec.run_dir else cfg.preset or "run")
    eval_batches = 1 if cfg.train.dry_run else None
    normalize = Normalizer.for_config(cfg, speed.channels_last)
    with StopFlag(rec.run_dir) as stop:
        for epoch in range(at.epoch, epochs):
            # Each epoch, not once: a run killed outright (power, OOM killer) still says
            # how far it got.
            rec.status(RUNNING, epoch + 1)
            # The permutation is drawn from a saved generator state, so a resumed epoch
            # visits the examples in the very order the interrupted one did.
            if at.shuffle_state is not None:
                shuffle.set_state(at.shuffle_state)
            start_shuffle = shuffle.get_state()
            order = data.order(torch.randperm(data.n_train, generator=shuffle).to(device))
            state = at.state or EpochState.zeros((), device)
            s = EpochSettings(cfg.train.batch_size, steps, normalize,
                              1 if device.type == "cpu" else NAN_CHECK_EVERY_CUDA, stop,
                              progress.bar(epoch + 1, epochs, steps, state.step), learner.augment)
            tic = time.perf_counter()
            try:
                with learner.threads():
                    train_one_epoch(learner, data.dataset.train, order, state, s, epoch * steps)
            except DivergedError as exc:
                reason = f"{exc}; " + (f"the checkpoint of epoch {epoch} is kept." if epoch > 0
                                       else "no epoch had finished, so there is no checkpoint.")
                rec.status(DIVERGED, epoch + 1, reason=reason)
                raise DivergedError(reason) from None
            finally:
                s.bar.close()
            synchronize(device)
            seconds = at.seconds + time.perf_counter() - tic
            if stop.requested:
                interrupt(rec, learner, cfg, history, shuffle, epoch, state, start_shuffle, seconds, speed)
            scores = evaluate_epoch(learner, data, normalize, cfg, eval_batches, epoch + 1)
            row = {**epoch_row(epoch + 1, float(state.loss_sum), int(state.correct), state.seen, scores.pop("val"),
                               scores.pop("test"), learning_rate(cfg, (epoch + 1) * steps - 1, steps), seconds,
                               state.seen), **scores}
            history.append(row)
            at = Position()
            rec.epoch_done(row, history, format_epoch(row, epochs),
                           checkpoint_state(learner.model.state_dict(), learner.optimizer.state_dict(), cfg,
                                            history, shuffle, epoch + 1, speed=speed.to_dict(),
                                            **learner.checkpoint_extra()))
            progress.epoch(history)
            if on_epoch is not None:
                on_epoch(row)
            if until is not None and until(row):
                rec.log(f"stopping after epoch {epoch + 1}: the target is reached")
                break
    rec.finish(learner.final_model, cfg, data.dataset.class_names, history, speed.to_dict(),
               **({"dry_run": True} if cfg.train.dry_run else {}))
    rec.log(closing_lines(history, device, rec.run_dir))
    progress.finish(f"{len(history)} epoch(s) of {steps} batches in "
                    f"{sum(r['epoch_seconds'] for r in history):.1f} s of training")
    return Run(cfg, learner.final_model, history, rec.run_dir, FINISHED, data.dataset.class_names, speed.to_dict())


def evaluate_epoch(learner: Learner, data: DeviceData, normalize: Normalizer, cfg: RunConfig,
                   max_batches: int | None, epoch: int) -> dict[str, Any]:
    """The epoch's validation (if any) and test (loss, accuracy) as "val" and "test", of
    the run's model (the moving average with optim.ema, the raw weights' accuracy then
    as *_accuracy_raw), and with train.tta the accuracies under test-time
    augmentation (val_accuracy_tta, test_accuracy_tta).
    The raw and TTA accuracies are measured every EXTRAS_EVERY epochs and at the last:
    together they cost up to 8 plain evaluations (the 91k-parameter speedrun network on
    one thread: 25 s per epoch against 7.5 s of training).
    Always float32, whatever the training precision: the accuracy reported is the one
    `lenet eval`, predict and the exported model give."""
    def measure(model: nn.Module, split: Split, index: torch.Tensor | None, tta: tuple[str, ...] = ()):
        loss, accuracy = evaluate(model, split, normalize, cfg.train.eval_batch_size, index, max_batches, tta=tta)
        return float(loss), float(accuracy)

    model = learner.final_model if learner.ema is not None else learner.forward
    out: dict[str, Any] = {"val": None}
    if data.val_index is not None:
        out["val"] = measure(model, data.dataset.train, data.val_index)
    test = cfg.train.evaluate_test
    out["test"] = measure(model, data.dataset.test, None) if test else None
    if epoch % EXTRAS_EVERY and epoch != cfg.train.epochs:
        return out
    if learner.ema is not None:
        if data.val_index is not None:
            out["val_accuracy_raw"] = measure(learner.forward, data.dataset.train, data.val_index)[1]
        if test:
            out["test_accuracy_raw"] = measure(learner.forward, data.dataset.test, None)[1]
    if cfg.train.tta:  # on the validation split too, so choosing TTA never needs the test set
        if data.val_index is not None:
            out["val_accuracy_tta"] = measure(model, data.dataset.train, data.val_index, tta_kinds(cfg))[1]
        if test:
            out["test_accuracy_tta"] = measure(model, data.dataset.test, None, tta_kinds(cfg))[1]
    return out


def tta_kinds(cfg: RunConfig) -> tuple[str, ...]:
    """The test-time views of a dataset: shifts always; mirror images where the training
    flipped, or could have (not MNIST, whose digits are not mirror-symmetric)."""
    flips = cfg.data.dataset != "mnist" or cfg.data.augment.force_flip
    return ("flip", "shift") if flips else ("shift",)


def header(cfg: RunConfig, model: nn.Module, data: DeviceData, device: torch.device, run_dir: Path | None,
           speed: Speed) -> str:
    return (f"run {run_dir or '(in memory)'}  ({cfg.preset or 'custom'} recipe, {cfg.model.name}, "
            f"{count_parameters(model):,} parameters, {cfg.data.dataset}, {data.n_train:,} train / "
            f"{data.n_val:,} val / {len(data.dataset.test):,} test, {device}, {speed.describe(cfg.train.batch_size)})")


def recorded_speed(cfg: RunConfig, saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The speed a checkpoint's run used: its record, or for a checkpoint from before
    lenet 0.2 what its config said then (no auto: fp32 unless --amp, no channels-last)."""
    if saved is None:
        return None
    return saved.get("speed") or {"precision": "bf16" if cfg.train.amp else "fp32",
                                  "channels_last": bool(cfg.train.channels_last), "reason": "lenet 0.1 checkpoint"}


def closing_lines(history: list[dict[str, Any]], device: torch.device, run_dir: Path | None) -> str:
    lines = []
    if history:
        last = history[-1]
        total_seconds = sum(r["epoch_seconds"] for r in history)
        total_examples = sum(r["examples_per_second"] * r["epoch_seconds"] for r in history)
        held_out = (f"test acc {last['test_accuracy']:.3f}" if last.get("test_accuracy") is not None
                    else f"val acc {last['val_accuracy']:.3f}" if last.get("val_accuracy") is not None
                    else "no test evaluation")
        lines += [f"loss {last['train_loss']:.3f}, train acc {last['train_accuracy']:.3f}, {held_out}",
                  f"{total_examples / max(total_seconds, 1e-9):.1f} examples/sec on {device}"]
    if run_dir is not None:
        lines.append(f"saved {run_dir}/: model.safetensors, metrics.jsonl, metrics.csv, curves.png, config.yaml")
    return "\n".join(lines)


# --------------------------------------------------------------------------- checkpoints


def interrupt(rec: Recorder, learner: Learner, cfg: RunConfig, history: list[dict[str, Any]],
              shuffle: torch.Generator, epoch: int, state: EpochState, start_shuffle: torch.Tensor,
              seconds: float, speed: Speed) -> None:
    """Ctrl-C: save the epoch in progress (at a step boundary), then stop with exit code 130."""
    if state.step == 0:
        # Stopped before this epoch's first step (Ctrl-C during the previous evaluation
        # or checkpoint): save the epoch boundary it is, with the shuffle generator from
        # before this epoch's permutation was drawn, else the resumed epoch would draw
        # the next epoch's permutation.
        shuffle.set_state(start_shuffle)
    partial = partial_epoch(state.loss_sum, state.correct, state.seen, start_shuffle, seconds)
    rec.interrupted(checkpoint_state(learner.model.state_dict(), learner.optimizer.state_dict(), cfg, history,
                                     shuffle, epoch, state.step, partial, speed=speed.to_dict(),
                                     **learner.checkpoint_extra()), epoch + 1, state.step)
    raise Interrupted(f"interrupted at epoch {epoch + 1}, step {state.step}; "
                      f"checkpoint saved. Continue with: lenet train --resume {rec.run_dir}")


def restore(saved: dict[str, Any], learner: Learner, shuffle: torch.Generator, device: torch.device,
            rec: Recorder) -> tuple[list[dict[str, Any]], Position]:
    """Model, optimiser, random states and position from a checkpoint; a checkpoint
    that does not fit the run's config is a RunError that says so, not a traceback."""
    with checkpoint_misfit(rec.run_dir):
        learner.model.load_state_dict(saved["model"])
        learner.load_optimizer(saved["optimizer"])
        learner.load_extra(saved)
        ckpt.set_rng_state(saved["rng"], shuffle)
        history, at = position(saved, device)
    rec.rewrite_history(history)
    rec.open_scalars(learner.cfg, at.epoch + 1)
    rec.log(f"resuming {rec.run_dir} at epoch {at.epoch + 1}" + (f", step {at.state.step + 1}" if at.state else ""))
    if read_status(rec.run_dir).get("status") == FINISHED or at.epoch >= learner.cfg.train.epochs:
        rec.log("nothing to do: the run had already finished")
    return history, at


