"""The front doors of training: train() and resume() for one run, train_many() and
resume_many() for runs trained together. Each owns its run directories (created,
locked, removed again if the run never started) and hands them to driver.fit."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from ..configuration.run import RunConfig
from ..errors import UsageError
from ..speed.choice import Speed
from ..store.recorder import Recorder
from ..store.runs import create_run_dir, default_run_name, remove_failed_start, run_lock
from .driver import EpochHook, fit
from .groups import check_group
from .result import Run


def train(cfg: RunConfig, out: str | Path | None = None, *, data: Any = None, on_epoch: EpochHook | None = None,
          until: EpochHook | None = None, exist_ok: bool = False, verbose: bool = False,
          speed: Speed | None = None) -> Run:
    """Train ``cfg``: in memory (writes nothing, prints nothing unless ``verbose``), or
    with ``out`` into the run directory ``out/<cfg.name or a dated name>`` that
    ``resume`` continues. ``data``: a Dataset or {"train": (images, labels), "test": ...}
    (default: ``cfg.data.dataset``, found as the CLI finds it). ``on_epoch(row)`` runs
    after each epoch; training ends early, as finished, once ``until(row)`` is true.
    ``speed``: how to compute (a lenet.speed.choice.Speed), instead of what the config
    and this machine decide. The run directory is locked meanwhile: a second writer
    gets RunBusy instead."""
    if out is None:
        return fit([cfg], [Recorder(None, verbose)], data=data, on_epoch=on_epoch, until=until, speed=speed)[0]
    run_dir = create_run_dir(Path(out), cfg.name or default_run_name(cfg), exist_ok)
    with run_lock(run_dir):
        cfg = cfg.model_copy(update={"name": run_dir.name, "out": str(out)})
        recorder = Recorder(run_dir, verbose)
        try:
            with recorder.failures_recorded():
                return fit([cfg], [recorder], data=data, on_epoch=on_epoch, until=until, speed=speed)[0]
        except BaseException:
            remove_failed_start(run_dir)  # data missing, say: no empty folder that looks like a run
            raise


def resume(run_dir: str | Path, *, data: Any = None, on_epoch: EpochHook | None = None,
           until: EpochHook | None = None, verbose: bool = False) -> Run:
    """Continue an interrupted run exactly (on the CPU: bitwise the uninterrupted run),
    with the speed its checkpoint recorded."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        recorder = Recorder(run_dir, verbose)
        cfg, saved = recorder.resume_state()
        with recorder.failures_recorded():
            return fit([cfg], [recorder], [saved], data=data, on_epoch=on_epoch, until=until)[0]


def train_many(cfgs: Sequence[RunConfig], exist_ok: bool = False, verbose: bool = False, *, data: Any = None,
               speed: Speed | None = None) -> list[Run]:
    """Train runs that share a groups.group_key together, each into ``cfg.out/cfg.name``;
    one Run per config, in order."""
    cfgs = list(cfgs)
    check_group(cfgs)
    run_dirs = [create_run_dir(Path(c.out), c.name or default_run_name(c), exist_ok) for c in cfgs]
    with contextlib.ExitStack() as locks:
        for d in run_dirs:  # one writer per run, as in train()
            locks.enter_context(run_lock(d))
        cfgs = [c.model_copy(update={"name": d.name}) for c, d in zip(cfgs, run_dirs)]
        return fit(cfgs, [Recorder(d) for d in run_dirs], data=data, speed=speed, verbose=verbose)


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
        check_group(cfgs)
        positions = {(int(s.get("epoch", -1)), int(s.get("step", -1))) for s in saved}
        if len(positions) != 1:
            raise UsageError("these runs stopped at different points (epoch, step): "
                             f"{sorted(positions)}; resume each on its own")
        return fit(cfgs, recorders, saved, verbose=verbose)
