"""The training loop, top to bottom: data on the device, batches by index.

    train(cfg) -> data -> model -> optimiser/schedule -> for each epoch:
        train_one_epoch()  one pass over a seeded permutation of the training set
        evaluate()         validation split (if any) and test set
        log line, metrics.jsonl/csv, checkpoint.pt, curves.png
    -> model.safetensors

The whole dataset lives on the device as uint8 (47 MB for 60k images) and is
normalised per batch; the loss and the number of correct predictions are summed
on the device, so a step never waits for the host (one sync per epoch).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .config import RunConfig
from .data import Dataset, Split, load_dataset, stratified_split
from .errors import DivergedError, Interrupted, RunError, UsageError
from .models import LeNet, count_parameters
from .runs import (RunLog, create_run_dir, default_run_name, environment_record, load_run_config,
                   remove_stray_temp_files, run_lock, save_config, write_json, write_metrics)

# How often (steps) a CUDA run looks for a NaN loss: each look is a host sync, and the
# step that went bad is recorded on the device, so the message still names it exactly.
NAN_CHECK_EVERY_CUDA = 50


# --------------------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA docs, "Reproducibility").
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    params = model.parameters()
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


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch))


class Normalizer:
    """uint8 (B, 1, 28, 28) -> float32 as in training: [0, 1], or standardised;
    in channels-last layout when the model is (--channels-last)."""

    def __init__(self, mode: str, mean: float, std: float, channels_last: bool = False):
        self.scale = 1.0 / 255.0
        self.shift = 0.0
        if mode == "standard":
            self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale
        x = x - self.shift if self.shift else x
        return x.contiguous(memory_format=self.memory_format)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast (--amp): bf16 needs no loss scaling, unlike fp16, and runs on
    CPUs with AVX-512 BF16/AMX as well as on CUDA."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- the loop


@dataclass
class EpochState:
    """Sums over the batches of one epoch, kept on the device (no per-step sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    step: int = 0  # steps done in this epoch
    first_bad_step: torch.Tensor | None = None  # global step of the first non-finite loss


class StopFlag:
    """Ctrl-C sets a flag that the loop reads between steps, so an interrupt never
    lands half-way through an optimiser update; a second Ctrl-C stops at once."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.requested = False
        self.run_dir = run_dir  # named in the message when a second Ctrl-C stops at once
        self._previous: Any = None

    def __enter__(self) -> "StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave SIGINT alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is KeyboardInterrupt and self.run_dir is not None and (self.run_dir / ckpt.CHECKPOINT).is_file():
            # The step in flight is lost, but the last epoch's checkpoint stands: say how to go on.
            raise Interrupted("stopped at once by a second Ctrl-C; the checkpoint of the last finished "
                              f"epoch is intact. Continue with: lenet train --resume {self.run_dir}") from None


def train_one_epoch(model: nn.Module, split: Split, permutation: torch.Tensor, state: EpochState,
                    optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: nn.Module,
                    normalize: Normalizer, batch_size: int, max_steps: int | None,
                    global_step: int, stop: StopFlag, check_every: int, progress: Any,
                    amp: bool = False) -> EpochState:
    """One pass over ``permutation``, starting at ``state.step`` (non-zero after a resume)."""
    model.train()
    n = len(permutation)
    steps = math.ceil(n / batch_size) if max_steps is None else min(max_steps, math.ceil(n / batch_size))
    while state.step < steps:
        if stop.requested:
            return state
        index = permutation[state.step * batch_size:(state.step + 1) * batch_size]
        x = normalize(split.images[index])  # (B, 1, 28, 28) float32
        y = split.labels[index]  # (B,)
        with autocast(x.device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)  # the loss in float32 whatever the forward ran in
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        step = global_step + state.step
        bad = ~torch.isfinite(loss.detach())
        state.first_bad_step = torch.where(bad & (state.first_bad_step < 0), step, state.first_bad_step)
        state.loss_sum += loss.detach() * len(index)
        state.correct += (logits.detach().argmax(1) == y).sum()
        state.seen += len(index)
        state.step += 1
        if state.step % check_every == 0 or state.step == steps:
            check_finite(state)
        progress.update(1)
    return state


def check_finite(state: EpochState) -> None:
    bad = int(state.first_bad_step)
    if bad >= 0:
        raise DivergedError(
            f"training diverged: the loss became NaN or infinite at step {bad + 1}. "
            "Try a lower learning rate (--lr), gradient-friendlier init or activation"
        )


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, normalize: Normalizer, batch_size: int,
             max_batches: int | None = None, amp: bool = False) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) over ``split``; big batches, no gradients."""
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    n = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
    for start in range(0, n, batch_size):
        x = normalize(split.images[start:start + batch_size])
        y = split.labels[start:start + batch_size]
        with autocast(x.device, amp):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return float(loss_sum) / max(1, n), int(correct) / max(1, n)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, normalize: Normalizer, batch_size: int = 2048) -> torch.Tensor:
    """Logits (N, classes) for uint8 images (N, 1, 28, 28)."""
    model.eval()
    outputs = [model(normalize(images[s:s + batch_size])) for s in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


# --------------------------------------------------------------------------- a run


@dataclass
class TrainResult:
    run_dir: Path | None
    config: RunConfig
    model: nn.Module
    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = "finished"

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics[-1].get("test_accuracy") if self.metrics else None


def prepare_data(cfg: RunConfig, device: torch.device) -> tuple[Dataset, Normalizer]:
    data = load_dataset(cfg.data.dataset, cfg.data.data_dir)
    if cfg.data.val_split > 0:
        # The split is a pure function of the seed, so a resumed run gets the same one.
        data.train, data.val = stratified_split(data.train, cfg.data.val_split, cfg.seed)
    data.train, data.test = data.train.to(device), data.test.to(device)
    if data.val is not None:
        data.val = data.val.to(device)
    spec = data.spec
    return data, Normalizer(cfg.data.normalize, spec.mean, spec.std, cfg.train.channels_last)


def accelerate(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """The module to call for forward passes, with the speed switches applied.

    The returned module shares its parameters with ``model``; weights are saved from
    ``model``, so a compiled run's files do not carry torch.compile's "_orig_mod." prefix.
    """
    t = cfg.train
    if t.cuda_graphs and device.type != "cuda":
        raise UsageError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if t.compile or t.cuda_graphs:
        # "reduce-overhead" records CUDA graphs of the compiled forward and backward and
        # replays them: one launch per graph instead of one per kernel.
        return torch.compile(model, mode="reduce-overhead" if t.cuda_graphs else None)
    return model


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}",
             f"train loss {row['train_loss']:.4f}", f"train acc {row['train_accuracy']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts += [f"val loss {row['val_loss']:.4f}", f"val acc {row['val_accuracy']:.4f}"]
    parts += [f"test acc {row['test_accuracy']:.4f}", f"lr {row['lr']:.3g}",
              f"{row['epoch_seconds']:.1f} s", f"{row['examples_per_second']:,.0f} ex/s"]
    return "  ".join(parts)


def _progress_bar(cfg: RunConfig, total: int, epoch: int, epochs: int):
    from tqdm import tqdm

    show = cfg.train.progress == "always" or (cfg.train.progress == "auto" and sys.stderr.isatty())
    return tqdm(total=total, disable=not show, leave=False, file=sys.stderr, unit="batch",
                desc=f"epoch {epoch}/{epochs}", dynamic_ncols=True)


def train(cfg: RunConfig, exist_ok: bool = False, resume_dir: Path | None = None,
          quiet: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``cfg`` into a new run directory, or continue ``resume_dir`` exactly.

    The run directory is locked while this runs (runs.run_lock): a second process
    that would write the same run stops with RunBusy instead.
    """
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    else:
        run_dir = create_run_dir(Path(cfg.out), cfg.name or default_run_name(cfg), exist_ok)
    with run_lock(run_dir):
        return _train_locked(cfg, run_dir, resume_dir is not None, quiet, on_epoch)


def _train_locked(cfg: RunConfig, run_dir: Path, resume: bool, quiet: bool,
                  on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    if resume:
        cfg = load_run_config(run_dir)
        saved = ckpt.load_checkpoint(run_dir)  # read under the lock: no other writer now
    else:
        cfg = cfg.model_copy(update={"name": run_dir.name})
        saved = None
    log = RunLog(run_dir, quiet=quiet)
    stray = remove_stray_temp_files(run_dir)
    if stray:
        log(f"removed {len(stray)} unfinished temporary file(s) that a killed process left: {', '.join(stray)}")

    seed_everything(cfg.seed, cfg.train.deterministic)
    device = resolve_device(cfg.device)
    data, normalize = prepare_data(cfg, device)
    model = LeNet(cfg.model).to(device)
    forward_model = accelerate(model, cfg, device)
    optimizer = make_optimizer(model, cfg)
    # Label smoothing spreads eps of the target mass over all classes (Szegedy et al. 2016).
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    batch_size = cfg.train.batch_size
    max_steps = 1 if cfg.train.dry_run else None
    epochs = 1 if cfg.train.dry_run else cfg.train.epochs
    steps_per_epoch = math.ceil(len(data.train) / batch_size) if max_steps is None else 1
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    check_every = 1 if device.type == "cpu" else NAN_CHECK_EVERY_CUDA
    eval_batches = 1 if cfg.train.dry_run else None

    metrics: list[dict[str, Any]] = []
    start_epoch, epoch_state, epoch_shuffle_state, partial_seconds = 0, None, None, 0.0
    if saved is None:
        save_config(run_dir, cfg)
        write_json(run_dir / "environment.json", environment_record(device, cfg.seed))
        log(f"run {run_dir}  ({cfg.preset or 'custom'} recipe, {cfg.model.name}, "
            f"{count_parameters(model):,} parameters, {cfg.data.dataset}, "
            f"{len(data.train):,} train / {len(data.val) if data.val else 0:,} val / "
            f"{len(data.test):,} test, {device})")
    else:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            ckpt.set_rng_state(saved["rng"], shuffle)
            metrics = list(saved["metrics"])
            start_epoch = saved["epoch"]
            if saved.get("step", 0) > 0:  # interrupted mid-epoch: continue that very epoch
                epoch_shuffle_state = saved["epoch_shuffle_state"]
                epoch_state = EpochState(saved["loss_sum"].to(device), saved["correct"].to(device),
                                         saved["seen"], saved["step"], torch.tensor(-1, device=device))
                partial_seconds = saved["epoch_seconds"]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # A checkpoint loaded safely but is not ours, or config.yaml was edited since:
            # either way the run cannot continue exactly, and a traceback would not say why.
            reason = "; ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:3])
            raise RunError(f"{run_dir / ckpt.CHECKPOINT} does not fit {run_dir / 'config.yaml'} "
                           f"({type(exc).__name__}: {reason}); was the config edited, or the "
                           "checkpoint copied from another run?") from None
        write_metrics(run_dir, metrics)  # drop rows of epochs the killed run did not checkpoint
        log(f"resuming {run_dir} at epoch {start_epoch + 1}"
            + (f", step {saved['step'] + 1}" if saved.get("step") else ""))
        if start_epoch >= epochs:
            log("nothing to do: the run had already finished")

    def checkpoint_state(epoch: int, step: int = 0, state: EpochState | None = None,
                         start_shuffle: torch.Tensor | None = None, seconds: float = 0.0) -> dict[str, Any]:
        out = {"epoch": epoch, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "metrics": metrics, "rng": ckpt.rng_state(shuffle),
               "config": cfg.to_dict()}
        if state is not None and step > 0:
            out.update(epoch_shuffle_state=start_shuffle, loss_sum=state.loss_sum.cpu(),
                       correct=state.correct.cpu(), seen=state.seen, epoch_seconds=seconds)
        return out

    # "running" until the end: a run killed outright (SIGKILL, power cut) still says so.
    write_json(run_dir / "status.json", {"status": "running", "epoch": start_epoch + 1})
    with StopFlag(run_dir) as stop:
        for epoch in range(start_epoch, epochs):
            # The permutation is drawn from a saved generator state, so a resumed epoch
            # visits the examples in the very order the interrupted one did.
            if epoch_shuffle_state is not None:
                shuffle.set_state(epoch_shuffle_state)
            start_shuffle = shuffle.get_state()
            permutation = torch.randperm(len(data.train), generator=shuffle).to(device)
            if epoch_state is None:
                epoch_state = EpochState(torch.zeros((), device=device),
                                         torch.zeros((), dtype=torch.long, device=device),
                                         first_bad_step=torch.tensor(-1, device=device))
            bar = _progress_bar(cfg, steps_per_epoch, epoch + 1, epochs)
            bar.update(epoch_state.step)
            tic = time.perf_counter()
            try:
                train_one_epoch(forward_model, data.train, permutation, epoch_state, optimizer, scheduler, loss_fn,
                                normalize, batch_size, max_steps, epoch * steps_per_epoch, stop, check_every, bar,
                                amp=cfg.train.amp)
            except DivergedError as exc:
                bar.close()
                kept = (f"; the checkpoint of epoch {epoch} is kept" if epoch > 0
                        else "; no epoch had finished, so there is no checkpoint")
                reason = f"{exc}{kept}."
                write_json(run_dir / "status.json", {"status": "diverged", "epoch": epoch + 1, "reason": reason})
                raise DivergedError(reason) from None
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_seconds = partial_seconds + time.perf_counter() - tic
            bar.close()
            if stop.requested:
                if epoch_state.step == 0:
                    # Stopped before this epoch's first step (Ctrl-C during the previous
                    # evaluation or checkpoint): save the epoch boundary it is, with the
                    # shuffle generator from before this epoch's permutation was drawn,
                    # else the resumed epoch would draw the next epoch's permutation.
                    shuffle.set_state(start_shuffle)
                ckpt.save_checkpoint(run_dir, checkpoint_state(epoch, epoch_state.step, epoch_state,
                                                               start_shuffle, epoch_seconds))
                write_json(run_dir / "status.json", {"status": "interrupted", "epoch": epoch + 1,
                                                    "step": epoch_state.step})
                raise Interrupted(f"interrupted at epoch {epoch + 1}, step {epoch_state.step}; "
                                  f"checkpoint saved. Continue with: lenet train --resume {run_dir}")

            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": float(epoch_state.loss_sum) / epoch_state.seen,
                "train_accuracy": int(epoch_state.correct) / epoch_state.seen,
                "val_loss": None, "val_accuracy": None,
            }
            if data.val is not None:
                row["val_loss"], row["val_accuracy"] = evaluate(forward_model, data.val, normalize,
                                                                cfg.train.eval_batch_size, eval_batches,
                                                                amp=cfg.train.amp)
            row["test_loss"], row["test_accuracy"] = evaluate(forward_model, data.test, normalize,
                                                              cfg.train.eval_batch_size, eval_batches,
                                                              amp=cfg.train.amp)
            # The rate of the epoch's last step (the optimiser already holds the next one's).
            row["lr"] = cfg.optim.lr * lr_factor(cfg, (epoch + 1) * steps_per_epoch - 1, steps_per_epoch)
            row["epoch_seconds"] = round(epoch_seconds, 4)
            row["examples_per_second"] = round(epoch_state.seen / max(epoch_seconds, 1e-9), 1)
            metrics.append(row)
            epoch_state, epoch_shuffle_state, partial_seconds = None, None, 0.0

            write_metrics(run_dir, metrics)
            ckpt.save_checkpoint(run_dir, checkpoint_state(epoch + 1))
            log(format_epoch(row, epochs))
            if on_epoch is not None:
                on_epoch(row)

    from .viz import plot_curves

    plot_curves([(run_dir.name, metrics)], run_dir / "curves.png", title=f"{run_dir.name}")
    last = metrics[-1] if metrics else {}
    ckpt.save_model(run_dir / ckpt.MODEL_FILE, model, cfg, data.class_names,
                    extra={"test_accuracy": last.get("test_accuracy"), "epochs": len(metrics)})
    write_json(run_dir / "status.json", {"status": "finished", "epochs": len(metrics)})
    if last:
        total_seconds = sum(r["epoch_seconds"] for r in metrics)
        total_examples = sum(r["examples_per_second"] * r["epoch_seconds"] for r in metrics)
        log(f"loss {last['train_loss']:.3f}, train acc {last['train_accuracy']:.3f}, "
            f"test acc {last['test_accuracy']:.3f}")
        log(f"{total_examples / max(total_seconds, 1e-9):.1f} examples/sec on {device}")
    log(f"saved {run_dir}/: model.safetensors, metrics.jsonl, metrics.csv, curves.png, config.yaml")
    return TrainResult(run_dir, cfg, model, metrics)
