"""`lenet sweep --backend ray`: each unit of work a Ray task.

    RayBackend      what run_sweep sends its units to: one task per run (or per group of
                    runs trained together), asking for --cpus-per-run and a fraction of a
                    GPU (--gpus-per-run); a worker or node that dies mid-run is retried
                    from the run's last epoch checkpoint (--max-failures)
    run_on_ray      connect, check the cluster (experiments/cluster.py), run the sweep

Ray is optional (pip install -e '.[ray]'): it is imported only when a sweep runs on it.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import ConfigError, Interrupted
from ...store.recorder import FAILED
from ..cluster import TaskOptions, check_nodes, connect, import_ray, refuse_uri
from .execute import RESUME, START, Payload, Work, action_for, execute_payload, record_failure, run_sweep, unit_payload
from .plan import SweepPlan

# Seconds a cancelled task gets to save its checkpoint after a Ctrl-C here.
CANCEL_GRACE_S = 30.0


def run_unit_remotely(payload: Payload, threads: int) -> list[dict[str, Any]]:
    """A Ray task: train (or resume) one unit of a sweep on whichever node got it."""
    import ray

    torch.set_num_threads(threads)
    results = execute_payload(payload)
    host, node = platform.node(), ray.get_runtime_context().get_node_id()
    for result in results:
        result["node"] = node
        if result["reason"]:
            result["reason"] = f"{result['reason']} (on {host})"
    return results


class RayBackend:
    """Where ``run_sweep`` sends its units of work when asked for ``--backend ray``."""

    def __init__(self, cpus_per_run: float = 1, gpus_per_run: float = 0, max_failures: int = 3,
                 log: Callable[[str], None] = print):
        self.options = TaskOptions(cpus_per_run, gpus_per_run, max_failures)
        self.log = log

    def check_fits(self, connection: Any) -> None:
        self.options.check_fits(connection)

    def run(self, units: list[Work], finish: Callable[[Any, str, dict[str, Any]], None]) -> None:
        ray = import_ray()
        from ray.exceptions import RayError

        options = self.options
        task = ray.remote(run_unit_remotely).options(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
            # Retries are ours, not Ray's: a retry must resume from the checkpoint the
            # dead attempt left, which only a fresh look at the run directory tells.
            max_retries=0)

        def submit(unit: Work) -> Any:
            return task.remote(unit_payload(unit), options.threads)

        pending = {submit(unit): (unit, 0) for unit in units}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                unit, failures = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except RayError as exc:  # the worker or its node died; the run's files are as it left them
                    reason = short_ray_error(exc)
                    labels = ", ".join(run.label for run, _ in unit)
                    if failures < options.max_failures:
                        retry = [(run, RESUME if action_for(run.run_dir) == RESUME else START) for run, _ in unit]
                        at = "its last checkpoint" if retry[0][1] == RESUME else "the start (no checkpoint yet)"
                        self.log(f"{labels}: {reason}; retry {failures + 1} of {options.max_failures} from {at}")
                        pending[submit(retry)] = (retry, failures + 1)
                        continue
                    reason = f"{reason}, {failures + 1} time(s) (--max-failures {options.max_failures})"
                    results = []
                    for run, _ in unit:
                        record_failure(run.run_dir, reason)
                        results.append({"run_dir": str(run.run_dir), "status": FAILED, "reason": reason,
                                        "test_accuracy": None, "seconds": 0.0})
                for (run, action), result in zip(unit, results):
                    finish(run, action, result)
        except KeyboardInterrupt:
            # ray.cancel interrupts each task as Ctrl-C would: its run saves a checkpoint
            # and stops, so the same command with --resume finishes only what is left.
            for ref in pending:
                ray.cancel(ref)
            deadline = time.monotonic() + CANCEL_GRACE_S
            for ref in pending:
                try:
                    ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - only waiting here; a cancelled task raises, as it should
                    pass
            raise Interrupted(f"sweep interrupted with {len(pending)} run(s) in flight") from None


def short_ray_error(exc: Exception) -> str:
    """Why a Ray task died, in a few words for the sweep's line and status.json."""
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    if "WorkerCrashed" in kind or "worker died" in first.lower() or "unexpected system error" in first.lower():
        return "its worker process died"
    if "NodeDied" in kind or "node" in first.lower() and "died" in first.lower():
        return "its node died"
    if "OutOfMemory" in kind:
        return "Ray killed its worker for using too much memory"
    return f"{kind}: {first[:200]}"


def run_on_ray(plan: SweepPlan, *, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
               max_failures: int = 3, retry_failed: bool = False, together: bool | None = None,
               log: Callable[[str], None] = print) -> list:
    """``lenet sweep --backend ray``: run_sweep with each unit of work a Ray task.

    The plan's paths must be absolute (Ray's workers have their own working directory).
    Runs trained together (lenet.training.groups) only when asked (``together``) or when each
    run asks for a GPU. A Ray started here is shut down at the end."""
    backend = RayBackend(cpus_per_run, gpus_per_run, max_failures, log)
    refuse_uri(str(plan.sweep_dir))
    if not Path(plan.sweep_dir).is_absolute():
        raise ConfigError(f"the sweep folder must be an absolute path on Ray, got {plan.sweep_dir}")
    connection = connect(address)
    try:
        log(f"on {connection.describe()}; each run asks for {cpus_per_run:g} CPU(s)"
            + (f" and {gpus_per_run:g} GPU" if gpus_per_run else ""))
        backend.check_fits(connection)
        check_nodes(Path(plan.sweep_dir).parent, connection,
                    data=[v.config.data.path for v in plan.variants if v.config.data.path])
        return run_sweep(plan, retry_failed=retry_failed, log=log, backend=backend,
                         together=together if together is not None else gpus_per_run > 0)
    finally:
        connection.shutdown()
