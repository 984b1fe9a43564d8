"""One object owns a run directory's files; the training loop only tells it what happened.

    Recorder(run_dir)   config.yaml, environment.json, metrics.jsonl/csv, checkpoint.pt,
                        status.json, train.log, curves.png, model.safetensors, and
                        TensorBoard's events.out.tfevents.* (tracking.py)
    Recorder(None)      a run in memory (``lenet.train(cfg)``): writes nothing, and prints
                        the log lines only when asked to (``verbose``)

Single runs, runs trained together (``multi``), sweeps and ``bench`` all record
through this class, so a run directory looks the same whoever made it, and
status.json has one writer and one vocabulary:

    {"status": "running" | "interrupted" | "finished" | "diverged" | "failed",
     "epoch": the epoch the run was in (the last one, once finished),
     "step": steps done in that epoch (interrupted only), "reason": why (diverged, failed)}
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from . import checkpoint as ckpt
from .models import MODEL_FILE, save_model
from ..errors import DivergedError, Interrupted, LenetError
from .files import read_json_or_empty, write_json
from ..configuration.run import RunConfig
from ..model.network import LeNet
from .tracking import Scalars
from ..speed.process import import_in_background
from .runs import environment_record, load_run_config, remove_stray_temp_files, save_config, write_metrics

RUNNING, INTERRUPTED, FINISHED, DIVERGED, FAILED = "running", "interrupted", "finished", "diverged", "failed"
STATUSES = (RUNNING, INTERRUPTED, FINISHED, DIVERGED, FAILED)
FAILED_STATUSES = (DIVERGED, FAILED)  # a sweep reports both as failed runs


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """A run's status.json, or {} where there is none (not started, or not a run)."""
    return read_json_or_empty(Path(run_dir) / "status.json")


def failure_reason(status: dict[str, Any]) -> str:
    return status.get("reason") or f"{status.get('status')} at epoch {status.get('epoch', '?')}"


def checkpoint_bound(cfg: RunConfig) -> int:
    """The most bytes a checkpoint of ``cfg``'s run may take: weights, gradient-sized
    optimiser state (Adam: two moments) and random states, each a few times over, plus
    room for the metrics of every epoch."""
    with torch.device("meta"):  # counting, not allocating
        parameters = sum(p.numel() for p in LeNet(cfg.model).parameters())
    return 16 * 4 * parameters + 64 * 2**20


class Recorder:
    """Everything a run leaves behind goes through here; ``run_dir=None`` keeps it in memory."""

    def __init__(self, run_dir: str | Path | None, verbose: bool = False):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.verbose = verbose
        # A run on disk plots its curves at the end: its plotting module loads meanwhile,
        # while the dataset decodes, and is waited for before training (ready()).
        self.ready = import_in_background("lenet.use.figures" if self.run_dir is not None else None)
        self.scalars: Scalars | None = None  # TensorBoard, opened by start and on resuming

    def open_scalars(self, cfg: RunConfig, first_epoch: int) -> None:
        """TensorBoard from ``first_epoch`` on (a resume calls it once the checkpoint is read)."""
        if self.run_dir is not None and cfg.train.tensorboard is not False and not cfg.train.dry_run:
            # Asked for and missing: one line on stderr per process, and in train.log.
            self.scalars = Scalars.open(self.run_dir, first_epoch, self.note, asked=cfg.train.tensorboard is True)

    def close(self) -> None:
        """Close the TensorBoard writer (a finished, interrupted or failed run)."""
        if self.scalars is not None:
            with contextlib.suppress(OSError):
                self.scalars.close()
            self.scalars = None

    @property
    def on_disk(self) -> bool:
        return self.run_dir is not None

    def log(self, line: str = "") -> None:
        """A line for the terminal (when verbose) and for train.log (on disk)."""
        if self.verbose:
            print(line, flush=True)
        self.note(line)

    def note(self, line: str) -> None:
        """A line for train.log only (what the terminal was already told another way)."""
        if self.run_dir is not None:
            try:
                with open(self.run_dir / "train.log", "a") as handle:
                    handle.write(line + "\n")
            except OSError:
                pass  # the log is a convenience: never fail a run over it

    def status(self, status: str, epoch: int, *, step: int | None = None, reason: str | None = None,
               **extra: Any) -> None:
        """The one writer of status.json."""
        assert status in STATUSES, status
        if self.run_dir is None:
            return
        record: dict[str, Any] = {"status": status, "epoch": epoch}
        if step is not None:
            record["step"] = step
        if reason is not None:
            record["reason"] = reason
        write_json(self.run_dir / "status.json", {**record, **extra})

    # ----------------------------------------------------------------- the run's life

    def start(self, cfg: RunConfig, device: torch.device, header: str, **environment: Any) -> None:
        """A new run: its resolved config and environment, then the header line."""
        self.ready()
        if self.run_dir is not None:
            stray = remove_stray_temp_files(self.run_dir)  # a run killed before its first write
            save_config(self.run_dir, cfg)
            write_json(self.run_dir / "environment.json", {**environment_record(device, cfg.seed), **environment})
        self.log(header)
        self.open_scalars(cfg, 1)
        if self.run_dir is not None and stray:
            self.log(f"removed {len(stray)} unfinished temporary file(s) that a killed process left: "
                     f"{', '.join(stray)}")

    def resume_state(self) -> tuple[RunConfig, dict[str, Any]]:
        """(config, checkpoint) of the run to continue; call it while holding the run's lock."""
        assert self.run_dir is not None
        cfg = load_run_config(self.run_dir)
        saved = ckpt.load_checkpoint(self.run_dir, checkpoint_bound(cfg))
        stray = remove_stray_temp_files(self.run_dir)
        if stray:
            self.log(f"removed {len(stray)} unfinished temporary file(s) that a killed process left: "
                     f"{', '.join(stray)}")
        return cfg, saved

    def rewrite_history(self, history: Sequence[dict[str, Any]]) -> None:
        """metrics.jsonl/csv as the checkpoint knows them: epochs a killed run logged after
        its last checkpoint are dropped, so each epoch appears once after a resume."""
        self.ready()
        if self.run_dir is not None:
            write_metrics(self.run_dir, list(history))

    def epoch_done(self, row: dict[str, Any], history: Sequence[dict[str, Any]], line: str,
                   checkpoint: dict[str, Any]) -> None:
        """Metrics, then the checkpoint of the epoch boundary, then the log line."""
        if self.run_dir is not None:
            write_metrics(self.run_dir, list(history))
            ckpt.save_checkpoint(self.run_dir, checkpoint)
        if self.scalars is not None:
            self.scalars.epoch(row)
        self.log(line)

    @contextlib.contextmanager
    def failures_recorded(self) -> Iterator[None]:
        """Whatever stops the run is said in status.json (best effort: the disk may be
        full): a divergence and a Ctrl-C record themselves; anything else is "failed"."""
        try:
            yield
        except DivergedError:
            raise
        except (Interrupted, KeyboardInterrupt, SystemExit) as exc:
            # SystemExit: the process was told to end (Ray ends the tasks of a driver that
            # died this way); like a Ctrl-C, the run is resumable, not failed.
            status = read_status(self.run_dir) if self.run_dir is not None else {}
            if status.get("status") == RUNNING:  # stopped at once, before it could save
                # An Interrupted raised from an epoch hook says who stopped the run (a search).
                reason = (str(exc) if isinstance(exc, Interrupted) and str(exc) else
                          f"its process was told to exit ({type(exc).__name__})" if isinstance(exc, SystemExit)
                          else "stopped by Ctrl-C")
                self._best_effort(INTERRUPTED, status.get("epoch", 1), f"{reason}; the last epoch's checkpoint "
                                  "stands")
            raise
        except BaseException as exc:
            # Only a run that was training: a resume refused before it starts (a damaged
            # checkpoint) leaves the run's files, its status too, as they were.
            status = read_status(self.run_dir) if self.run_dir is not None else {}
            if status.get("status") == RUNNING:
                reason = str(exc) if isinstance(exc, LenetError) else f"{type(exc).__name__}: {exc}"
                self._best_effort(FAILED, status.get("epoch", 1), reason)
            raise
        finally:
            self.close()

    def _best_effort(self, status: str, epoch: int, reason: str) -> None:
        with contextlib.suppress(LenetError, OSError):
            self.status(status, epoch, reason=reason)

    def interrupted(self, checkpoint: dict[str, Any], epoch: int, step: int) -> None:
        if self.run_dir is not None:
            ckpt.save_checkpoint(self.run_dir, checkpoint)
        self.status(INTERRUPTED, epoch, step=step)
        self.close()

    def finish(self, model: nn.Module, cfg: RunConfig, class_names: Sequence[str],
               history: Sequence[dict[str, Any]], speed: dict[str, Any] | None = None, **extra: Any) -> None:
        """curves.png and model.safetensors, then status "finished" (last: a run killed
        while saving its model is still resumable, not "finished" without a model)."""
        if self.run_dir is None:
            return
        from ..use.figures import plot_curves

        plot_curves([(self.run_dir.name, list(history))], self.run_dir / "curves.png", title=self.run_dir.name)
        last = history[-1] if history else {}
        save_model(self.run_dir / MODEL_FILE, model, cfg, tuple(class_names),
                        extra={"test_accuracy": last.get("test_accuracy"), "epochs": len(history),
                               "speed": speed or {}})
        self.status(FINISHED, len(history), **extra)
        self.close()
