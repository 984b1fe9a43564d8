"""Running a sweep's plan: each run trained, resumed, skipped or left as it is.

    run_sweep(plan)   for every run, by its status.json (recorder's vocabulary):
                        finished              skipped
                        diverged / failed     kept as failed (trained again with retry_failed)
                        has a checkpoint      resumed
                        anything else         started (a folder a killed run left is cleared)
                      (action_for and start_or_resume, which a search's trials use too),
                      one run after another, in ``jobs`` processes, or, where runs share
                      their layer shapes, several in one process as one stacked model (``multi``)

A run that fails (diverges, its data is missing or corrupt, it crashes) is recorded
as failed with its reason in status.json, and the sweep goes on with the others; only
Ctrl-C stops it, and the same command then finishes what is left. A run another
lenet process is training is left to that process. The summary is rewritten after
every run, so an interrupted sweep still has an up-to-date summary.md.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ...configuration.run import RunConfig
from ...data.datasets import locate
from ...device import resolve_device
from ...errors import ConfigError, DivergedError, Interrupted, LenetError, RunBusy, RunError
from ...store import tracking
from ...store.checkpoint import CHECKPOINT, load_checkpoint
from ...store.files import write_json
from ...store.recorder import FAILED, FAILED_STATUSES, FINISHED, Recorder, failure_reason, read_status
from ...store.runs import clear_run_dir, load_run_config, read_metrics, run_lock
from ...training.groups import groups
from ...training.result import Run
from ...training.run import resume, resume_many, train, train_many
from .plan import PlannedRun, SweepPlan, comparable, format_changes, format_value
from .summary import short, write_summary

# What the sweep does with a run (not a run status: those are recorder.STATUSES).
SKIP, KEEP_FAILED, RESUME, START = "skip", "keep-failed", "resume", "start"


@dataclass
class RunOutcome:
    variant: str
    seed: int
    run_dir: str
    status: str | None  # the run's status.json status afterwards; None: another process has it
    action: str  # skipped | started | resumed | left (to the process training it now)
    reason: str | None = None
    test_accuracy: float | None = None
    seconds: float = 0.0  # wall time this sweep spent on the run
    node: str | None = None  # the Ray node that trained it (--backend ray)

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES


def action_for(run_dir: str | Path, retry_failed: bool = False) -> str:
    """What to do with the run in ``run_dir``, from what the directory holds (its
    status.json, checkpoint and config): SKIP, KEEP_FAILED, RESUME or START."""
    run_dir = Path(run_dir)
    status = read_status(run_dir).get("status")
    if status == FINISHED and (run_dir / "metrics.jsonl").is_file():
        return SKIP
    if status in FAILED_STATUSES:
        return START if retry_failed else KEEP_FAILED
    if (run_dir / CHECKPOINT).is_file() and (run_dir / "config.yaml").is_file():
        return RESUME
    return START


def start_or_resume(cfg: RunConfig, run_dir: Path, action: str,
                    on_epoch: Callable[[dict[str, Any]], Any] | None = None) -> Run:
    """Train the run in ``run_dir`` as ``action`` (action_for) says: RESUME continues it
    from its checkpoint; START trains ``cfg`` afresh, first clearing what a run killed
    before its first checkpoint, or a failed one, left there."""
    if action == RESUME:
        return resume(run_dir, on_epoch=on_epoch)
    if run_dir.exists():
        clear_run_dir(run_dir)
    return train(cfg, out=run_dir.parent, exist_ok=True, on_epoch=on_epoch)


def check_same_config(run: PlannedRun) -> None:
    """A run directory from an older, different spec must not be counted as this plan's."""
    if not (run.run_dir / "config.yaml").is_file():
        return
    saved = comparable(load_run_config(run.run_dir))
    wanted = comparable(run.config)
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        detail = "; ".join(f"{k}: {format_value(saved.get(k))} there, {format_value(wanted.get(k))} now"
                           for k in differing[:4])
        raise RunError(f"{run.run_dir} was trained with a different config ({detail}). "
                       "Use a new sweep name (--name) or --out, or delete that run directory")


def record_failure(path: Path, reason: str) -> None:
    """status.json says "failed" with the reason (a diverged run keeps its own status)."""
    if read_status(path).get("status") in FAILED_STATUSES:
        return
    path.mkdir(parents=True, exist_ok=True)
    epoch = len(read_metrics(path, missing_ok=True)) + 1
    Recorder(path).status(FAILED, epoch, reason=reason)


def execute_run(config: dict[str, Any], run_dir: str, action: str) -> dict[str, Any]:
    """Train (or resume) one run and return its outcome; a failure is recorded, not raised.

    Module-level so a worker process (or a Ray task) can run it. Only Ctrl-C propagates.
    """
    tic = time.perf_counter()
    path = Path(run_dir)
    outcome: dict[str, Any] = {"run_dir": run_dir, "status": FINISHED, "reason": None, "test_accuracy": None}
    try:
        # Locked before anything is cleared: another sweep over the same folder may be
        # training this very run, and its files must not be deleted under it.
        with run_lock(path) if path.is_dir() else contextlib.nullcontext():
            result = start_or_resume(RunConfig.model_validate(config), path, action)
        outcome["test_accuracy"] = result.test_accuracy
    except RunBusy as exc:
        outcome.update(status=None, reason=str(exc))  # the other process finishes it; not a failure
    except (Interrupted, KeyboardInterrupt):
        raise
    except DivergedError as exc:
        outcome.update(status=read_status(path).get("status", FAILED), reason=str(exc))
        record_failure(path, str(exc))
    except LenetError as exc:  # data missing or corrupt, a bad checkpoint, a full disk...
        outcome.update(status=FAILED, reason=str(exc))
        record_failure(path, str(exc))
    except Exception as exc:  # noqa: BLE001 - any other crash fails this run, not the sweep
        reason = f"{type(exc).__name__}: {exc}"
        outcome.update(status=FAILED, reason=reason)
        record_failure(path, reason)
    outcome["seconds"] = time.perf_counter() - tic
    return outcome


def execute_together(configs: list[dict[str, Any]], run_dirs: list[str], action: str = START) -> list[dict[str, Any]]:
    """Train (or resume) runs that share their layer shapes in one stacked process
    (lenet.training.groups). A run that diverges is recorded as failed, as in execute_run; the
    others go on. A failure of the whole group fails each of its runs."""
    tic = time.perf_counter()
    with contextlib.ExitStack() as locks:
        try:
            for run_dir in run_dirs:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                locks.enter_context(run_lock(Path(run_dir)))
        except RunBusy as exc:  # another sweep is on one of them: leave the whole group to it
            return [{"run_dir": d, "status": None, "reason": str(exc), "test_accuracy": None, "seconds": 0.0}
                    for d in run_dirs]
        try:
            if action == RESUME:
                results = resume_many(run_dirs)
            else:
                for run_dir in run_dirs:
                    clear_run_dir(Path(run_dir))  # killed before its first checkpoint, or a retry
                results = train_many([RunConfig.model_validate(c) for c in configs], exist_ok=True)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the group failed as one: so does each of its runs
            reason = str(exc) if isinstance(exc, LenetError) else f"{type(exc).__name__}: {exc}"
            for run_dir in run_dirs:
                record_failure(Path(run_dir), reason)
            return [{"run_dir": d, "status": FAILED, "reason": reason, "test_accuracy": None,
                     "seconds": (time.perf_counter() - tic) / len(run_dirs)} for d in run_dirs]
    seconds = (time.perf_counter() - tic) / len(results)
    outcomes = []
    for run_dir, result in zip(run_dirs, results):
        failed = result.status != FINISHED
        outcomes.append({"run_dir": run_dir, "status": result.status,
                         "reason": failure_reason(read_status(Path(run_dir))) if failed else None,
                         "test_accuracy": None if failed else result.test_accuracy, "seconds": seconds})
    return outcomes


Work = list[tuple[PlannedRun, str]]  # runs to execute as one unit: one alone, or a group together


def batch_groups(todo: Work, together: bool | None) -> list[Work]:
    """``todo`` cut into units of work: runs that lenet.training.groups can batch, started or
    resumed together (resumed ones only with those stopped at the same point).

    together=None (auto) batches on CUDA only: on a CPU, runs stacked into one model
    train slower per run than one run alone, while a GPU that one LeNet leaves idle
    gains most from it.
    """
    if together is None:
        together = bool(todo) and resolve_device(todo[0][0].config.device).type == "cuda"
    if not together:
        return [[item] for item in todo]
    units: list[Work] = []
    by_action: dict[Any, Work] = {}
    for run, action in todo:
        key = (action, _stopped_at(run) if action == RESUME else None)
        by_action.setdefault(key, []).append((run, action))
    for items in by_action.values():
        units += [[items[i] for i in group] for group in groups([run.config for run, _ in items])]
    return units


def _stopped_at(run: PlannedRun) -> tuple[int, int]:
    """(epoch, step) of a run's checkpoint, so only runs stopped together resume together."""
    try:
        saved = load_checkpoint(run.run_dir)
        return int(saved.get("epoch", -1)), int(saved.get("step", -1))
    except (LenetError, TypeError, ValueError):
        return -1, -1


def _init_worker(threads: int) -> None:
    # Each of N workers gets cores/N threads: N processes of all-core torch fight over
    # the same cores and run slower together than one alone.
    torch.set_num_threads(threads)
    tracking.stay_quiet_about_missing()  # the sweep said it once; each train.log still says it


Payload = list[tuple[dict[str, Any], str, str]]  # (config, run_dir, action) per run: what crosses processes


def unit_payload(unit: Work) -> Payload:
    return [(run.config.to_dict(), str(run.run_dir), action) for run, action in unit]


def execute_payload(payload: Payload) -> list[dict[str, Any]]:
    """Run one unit of work, in this process, a pool worker or a Ray task: one run
    alone, or several trained together."""
    if len(payload) == 1:
        config, run_dir, action = payload[0]
        return [execute_run(config, run_dir, action)]
    return execute_together([c for c, _, _ in payload], [d for _, d, _ in payload], payload[0][2])


def execute_unit(unit: Work) -> list[dict[str, Any]]:
    """Run one unit of work (in this process or a worker's)."""
    return execute_payload(unit_payload(unit))


def write_plan(plan: SweepPlan) -> None:
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan.sweep_dir / "sweep.json", plan.to_dict())


def run_sweep(plan: SweepPlan, jobs: int = 1, retry_failed: bool = False,
              log: Callable[[str], None] = print, progress: bool | None = None,
              together: bool | None = None, backend: Any = None) -> list[RunOutcome]:
    """Train every run of ``plan`` not finished yet; one outcome per run, in plan order.

    ``backend``: where the units of work run; None = this machine (one by one, or in
    ``jobs`` processes). An object with ``run(units, finish)`` runs them elsewhere (Ray).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    runs = plan.runs()
    for run in runs:
        check_same_config(run)
    write_plan(plan)
    outcomes: dict[str, RunOutcome] = {}
    todo: Work = []
    total, done = len(runs), 0
    for run in runs:
        action = action_for(run.run_dir, retry_failed)
        if action in (SKIP, KEEP_FAILED):
            status = read_status(run.run_dir)
            rows = read_metrics(run.run_dir, missing_ok=True)
            acc = rows[-1].get("test_accuracy") if action == SKIP and rows else None
            outcomes[run.run_dir.name] = RunOutcome(run.variant, run.seed, str(run.run_dir), status.get("status"),
                                                    "skipped", None if action == SKIP else failure_reason(status), acc)
            done += 1
            what = f"test acc {acc:.4f}" if acc is not None else f"failed earlier: {short(failure_reason(status))}"
            log(f"[{done}/{total}] {run.label}: {what} (done before, skipped)")
        else:
            todo.append((run, action))
    bar = _overall_bar(total, done, progress)

    def finish(run: PlannedRun, action: str, result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        verb = "resumed" if action == RESUME else "started"
        outcome = RunOutcome(run.variant, run.seed, result["run_dir"], result["status"],
                             verb if result["status"] is not None else "left", result["reason"],
                             result["test_accuracy"], result["seconds"], result.get("node"))
        outcomes[run.run_dir.name] = outcome
        if outcome.status == FINISHED:
            what = f"test acc {outcome.test_accuracy:.4f}"
        elif outcome.action == "left":
            what = "skipped: another lenet process is training it now"
        else:
            what = f"FAILED: {short(outcome.reason)}"
        resumed = ", resumed" if verb == "resumed" else ""
        node = f", node {outcome.node[:8]}" if outcome.node else ""
        line = f"[{done}/{total}] {run.label}: {what} ({outcome.seconds:.1f} s{resumed}{node})"
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            log(line)
        write_summary(plan.sweep_dir, plots=False)

    units = batch_groups(todo, together)
    try:
        if backend is not None:
            backend.run(units, finish)
        elif jobs == 1 or len(units) <= 1:
            for unit in units:
                if len(unit) > 1:
                    log(f"training {len(unit)} runs together: {', '.join(run.label for run, _ in unit)}")
                for (run, action), result in zip(unit, execute_unit(unit)):
                    finish(run, action, result)
        else:
            _run_parallel(units, jobs, finish)
    except Interrupted as exc:
        first = str(exc).split(";")[0]
        raise Interrupted(f"{first}; checkpoint saved. Run the same `lenet sweep` command with --resume to finish: "
                          "finished runs are skipped and interrupted ones resume") from None
    finally:
        if bar is not None:
            bar.close()
        if plan.sweep_dir.is_dir():
            write_summary(plan.sweep_dir)
    return [outcomes[r.run_dir.name] for r in runs]


def _run_parallel(units: list[Work], jobs: int, finish: Callable[[PlannedRun, str, dict[str, Any]], None]) -> None:
    # spawn, not fork: forking a process that has started torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if any(run.config.train.tensorboard is True for unit in units for run, _ in unit) \
            and not tracking.writer_available():
        tracking.say_missing_once()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(execute_unit, unit): unit for unit in units}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = pending.pop(future)
                    for (run, action), result in zip(unit, future.result()):
                        finish(run, action, result)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _overall_bar(total: int, done: int, progress: bool | None):
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    return tqdm(total=total, initial=done, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)


def dry_run_lines(plan: SweepPlan, retry_failed: bool = False) -> list[str]:
    """What run_sweep would do, run by run, and a warning for each dataset not found."""
    runs = plan.runs()
    lines = [f"sweep {plan.name}: {len(plan.variants)} variants x {len(plan.seeds)} seeds = {len(runs)} runs "
             f"in {plan.sweep_dir}/"]
    counts: dict[str, int] = {}
    missing: dict[tuple[str, str | None], str] = {}
    for run in runs:
        action = action_for(run.run_dir, retry_failed)
        label = {SKIP: "finished", KEEP_FAILED: "failed", RESUME: "resume", START: "new"}[action]
        if action == START and read_status(run.run_dir).get("status") in FAILED_STATUSES:
            label = "retry"
        counts[label] = counts.get(label, 0) + 1
        variant = next(v for v in plan.variants if v.name == run.variant)
        lines.append(f"  {label:<8} {run.run_dir.name:<28} {format_changes(variant.changes)}"
                     f"  ({run.config.train.epochs} epochs, {run.config.data.dataset})")
        key = (run.config.data.dataset, run.config.data.data_dir)
        if action in (START, RESUME) and key not in missing:
            try:
                locate(*key, download=False)
                missing[key] = ""
            except LenetError:
                missing[key] = run.config.data.dataset
    lines.append("would train " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for dataset in sorted({d for d in missing.values() if d}):
        affected = sum(1 for r in runs if r.config.data.dataset == dataset and action_for(r.run_dir, retry_failed)
                       in (START, RESUME))
        lines.append(f"warning: dataset {dataset!r} is not on this machine (nor in --data-dir / LENET_DATA_DIR); "
                     f"its {affected} run(s) would download it or fail. Get it first: lenet download {dataset}")
    return lines


def format_dry_run(plan: SweepPlan, retry_failed: bool = False) -> str:
    return "\n".join(dry_run_lines(plan, retry_failed))
