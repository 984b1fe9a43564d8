"""The pieces of the training loop, for one model and for K models at once alike.

    train_one_epoch()   one pass over a permutation of the training rows
    evaluate()          mean loss and accuracy over a split, big batches, no gradients
    epoch_row()         an epoch's numbers as a row of metrics.jsonl
    StopFlag            Ctrl-C as a flag read between steps
    checkpoint_state()  what a checkpoint holds, and position() where it continues

``driver.fit`` drives them; K models that share their layer shapes carry a leading
K dimension: (K, B) indices, (K, B, classes) logits and (K,) losses.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configuration.run import RunConfig
from ..data.datasets import Normalizer, Split
from ..errors import Interrupted, RunError
from ..speed.forward import autocast, eval_batch_size
from ..store import checkpoint as ckpt
from .loss import cross_entropy


@dataclass
class EpochSettings:
    """What a pass over the data needs besides the learner: the same every epoch."""

    batch_size: int
    steps: int  # optimiser steps per epoch (1 for a dry run)
    normalize: Normalizer
    check_every: int  # steps between NaN checks; each is a host sync
    stop: "StopFlag"
    bar: Any = None  # a progress bar (update(n)), or None
    augment: Any = None  # augment.Augmenter: uint8 batch -> augmented float pixels; None: as they are


@dataclass
class EpochState:
    """Sums over the batches of one epoch, kept on the device (no per-step sync).
    Shapes are () for one model and (K,) for K models trained together."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0  # examples per model
    step: int = 0  # steps done in this epoch
    first_bad_step: torch.Tensor | None = None  # global step of the first non-finite loss; -1 = none

    @classmethod
    def zeros(cls, shape: tuple[int, ...], device: torch.device) -> "EpochState":
        return cls(torch.zeros(shape, device=device), torch.zeros(shape, dtype=torch.long, device=device),
                   first_bad_step=torch.full(shape, -1, dtype=torch.long, device=device))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, global_step: int) -> None:
        batch = labels.shape[-1]
        bad = ~torch.isfinite(loss)
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), global_step, self.first_bad_step)
        self.loss_sum += loss * batch
        self.correct += (logits.argmax(-1) == labels).sum(-1)
        self.seen += batch
        self.step += 1


def gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index] for an index of any shape, by index_select: indexing takes the general
    path of advanced indexing, several times slower on the CPU (docs/speed.md)."""
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


def train_one_epoch(learner: Any, split: Split, order: torch.Tensor, state: EpochState,
                    s: EpochSettings, first_step: int) -> EpochState:
    """One pass over ``order`` (rows of ``split``: (N,), or (K, N) for K models),
    from ``state.step`` on (non-zero after a resume); stops early on Ctrl-C."""
    learner.forward.train()
    with learner.held():
        while state.step < s.steps:
            if s.stop.requested:
                return state
            index = order[..., state.step * s.batch_size:(state.step + 1) * s.batch_size]  # (B,) or (K, B)
            images = gather(split.images, index)  # (..., B, 1, 28, 28) uint8
            x = s.normalize(s.augment(images) if s.augment is not None else images)
            y = gather(split.labels, index)  # (..., B)
            loss, logits = learner.step(x, y, first_step + state.step)
            state.add(loss, logits, y, first_step + state.step)
            if state.step % s.check_every == 0 or state.step == s.steps:
                learner.check_finite(state)
            if s.bar is not None:
                s.bar.update(1)
    return state


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, normalize: Normalizer, batch_size: int | None,
             index: torch.Tensor | None = None, max_batches: int | None = None,
             amp: bool = False, tta: tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy loss, accuracy) over ``split``, or over its rows ``index``
    ((N,), or (K, N): each of K models its own rows); big batches, no gradients.
    Shapes: () for one model, (K,) when ``model`` maps a batch to (K, B, classes).
    ``tta``: test-time augmentation, the predicted probabilities averaged over the image
    and its views (tta_views: "flip", "shift"). ``batch_size`` None: the device's default
    (runtime.eval_batch_size)."""
    model.eval()
    batch_size = eval_batch_size(batch_size, split.images.device)
    n = len(split) if index is None else index.shape[-1]
    n = n if max_batches is None else min(n, max_batches * batch_size)
    loss_sum: Any = 0.0
    correct: Any = 0
    for start in range(0, n, batch_size):
        if index is None:
            images, y = split.images[start:start + batch_size], split.labels[start:start + batch_size]
        else:
            rows = index[..., start:start + batch_size]
            images, y = gather(split.images, rows), gather(split.labels, rows)
        with autocast(images.device, amp):
            if tta:  # mean probability over the views, as log-probabilities for the loss
                logits = torch.stack([model(normalize(v)).float().log_softmax(-1) for v in tta_views(images, tta)])
                logits = logits.logsumexp(0) - math.log(len(logits))
            else:
                logits = model(normalize(images))  # (B, C) or (K, B, C)
        y = y.expand(logits.shape[:-1])  # one test set for K models: the same labels for each
        loss_sum = loss_sum + cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(-1) == y).sum(-1)
    # The count divided on the host in float64: 9,900 of 10,000 is 0.99, where float32
    # would say 0.98999995 and miss a target (and MPS has no float64).
    return loss_sum / max(1, n), torch.as_tensor(correct).cpu().double() / max(1, n)


def tta_views(images: torch.Tensor, kinds: tuple[str, ...]) -> list[torch.Tensor]:
    """The image and its test-time views: "flip" (left-right), "shift" (one pixel in each
    of the four directions, zeros coming in). uint8 (..., 1, H, W) in, the same out."""
    views = [images]
    if "flip" in kinds:
        views.append(images.flip(-1))
    if "shift" in kinds:
        padded = nn.functional.pad(images, (1, 1, 1, 1))
        height, width = images.shape[-2:]
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            views.append(padded[..., dy:dy + height, dx:dx + width])
    return views


def epoch_row(epoch: int, loss_sum: float, correct: int, seen: int, val: tuple[float, float] | None,
              test: tuple[float, float] | None, lr: float, seconds: float, examples: int) -> dict[str, Any]:
    """One line of metrics.jsonl; ``examples`` per ``seconds`` of wall time."""
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
        "val_loss": val[0] if val else None, "val_accuracy": val[1] if val else None,
        "test_loss": test[0] if test else None, "test_accuracy": test[1] if test else None,
        # The rate of the epoch's last step (the optimiser already holds the next one's).
        "lr": lr,
        "epoch_seconds": round(seconds, 4),
        # The count itself: a rate times a rounded time loses examples of a millisecond epoch.
        "examples": examples,
        "examples_per_second": examples / max(seconds, 1e-9),
    }


def examples_of(row: dict[str, Any]) -> float:
    """Examples an epoch trained on; rows written before the count was recorded hold only the rate."""
    return row["examples"] if "examples" in row else row["examples_per_second"] * row["epoch_seconds"]


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}",
             f"train loss {row['train_loss']:.4f}", f"train acc {row['train_accuracy']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts += [f"val loss {row['val_loss']:.4f}", f"val acc {row['val_accuracy']:.4f}"]
    also = [f"{label} {row[key]:.4f}" for key, label in (("test_accuracy_raw", "raw"), ("test_accuracy_tta", "tta"))
            if row.get(key) is not None]
    if row.get("test_accuracy") is not None:
        parts.append(f"test acc {row['test_accuracy']:.4f}" + (f" ({', '.join(also)})" if also else ""))
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_seconds']:.1f} s", f"{row['examples_per_second']:,.0f} ex/s"]
    return "  ".join(parts)


class StopFlag:
    """Ctrl-C sets a flag that the loop reads between steps, so an interrupt never
    lands half-way through an optimiser update; a second Ctrl-C stops at once.
    Only a run with a directory installs it: a run in memory has nothing to save,
    and Ctrl-C (a notebook's "interrupt kernel") stops it as usual."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.requested = False
        self.run_dir = run_dir  # named in the message when a second Ctrl-C stops at once
        self._previous: Any = None

    def __enter__(self) -> "StopFlag":
        if self.run_dir is None:
            return self
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


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Position:
    """Where a run continues: the epoch, and within it the sums, shuffle and time so far."""

    epoch: int = 0
    state: EpochState | None = None
    shuffle_state: torch.Tensor | None = None  # the generator state this epoch's permutation came from
    seconds: float = 0.0


def checkpoint_state(run_state: dict[str, Any], cfg: RunConfig, history: list[dict[str, Any]],
                     shuffle: torch.Generator, epoch: int, step: int = 0, partial: dict[str, Any] | None = None,
                     speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue at (epoch, step): ``run_state`` (the learner's: model,
    optimizer, and the moving average and augmentation generator where there are any),
    the history and every random state; ``partial``: the sums of an epoch stopped
    half-way (partial_epoch). The lr needs no state: it is a function of the step."""
    out = {"epoch": epoch, "step": step, **run_state, "metrics": list(history), "rng": ckpt.rng_state(shuffle),
           "config": cfg.to_dict(), "speed": speed or {}}  # the speed it ran with: a resume keeps it
    if step > 0 and partial is not None:
        out.update(partial)
    return out


def partial_epoch(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, start_shuffle: torch.Tensor,
                  seconds: float) -> dict[str, Any]:
    return {"epoch_shuffle_state": start_shuffle, "loss_sum": loss_sum.cpu(), "correct": correct.cpu(),
            "seen": seen, "epoch_seconds": seconds}


def position(saved: dict[str, Any], device: torch.device) -> tuple[list[dict[str, Any]], Position]:
    """The history and the place to continue from, as a checkpoint records them."""
    history = list(saved["metrics"])
    at = Position(int(saved["epoch"]))
    if saved.get("step", 0) > 0:  # interrupted mid-epoch: continue that very epoch
        at.state = EpochState(saved["loss_sum"].to(device), saved["correct"].to(device), int(saved["seen"]),
                              int(saved["step"]), torch.full(saved["loss_sum"].shape, -1, device=device))
        at.shuffle_state, at.seconds = saved["epoch_shuffle_state"], float(saved["epoch_seconds"])
    return history, at


@contextlib.contextmanager
def checkpoint_misfit(run_dir: Path | None):
    """A checkpoint that loaded safely but does not fit the run (not ours, or config.yaml
    edited since) is a RunError that says so: the run cannot continue exactly, and a
    traceback would not say why."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        reason = "; ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:3])
        raise RunError(f"{Path(run_dir or '.') / ckpt.CHECKPOINT} does not fit {Path(run_dir or '.') / 'config.yaml'} "
                       f"({type(exc).__name__}: {reason}); was the config edited, or the "
                       "checkpoint copied from another run?") from None
