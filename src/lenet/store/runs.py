"""Run directories and the files in them, all written atomically.

A run directory holds: config.yaml (resolved), metrics.jsonl + metrics.csv (one row
per epoch), checkpoint.pt (resumable state), model.safetensors (weights + config in
the metadata), curves.png, environment.json, status.json and train.log.
Every file is written to a temporary name, flushed, fsynced and renamed, so a kill
at any moment leaves the old version or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import yaml

from .. import __version__
from ..errors import ConfigError, RunBusy, RunError
from .files import UMASK, atomic_write_text, read_json_or_empty
from ..configuration.files import load_file
from ..configuration.run import RunConfig, validate
from ..data.datasets import data_spec

try:  # POSIX; on Windows runs are not locked (see run_lock)
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

METRIC_COLUMNS = [
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
    "test_accuracy", "lr", "epoch_seconds", "examples", "examples_per_second",
]


LOCK_FILE = ".lock"
TEMP_PATTERN = ".*.tmp"  # atomic_write_bytes' temporary names: .<file>.<random>.tmp

# --------------------------------------------------------------------------- one writer per run

_HELD: dict[Path, list[int]] = {}  # resolved run dir -> [lock fd, depth]: re-entrant in a process


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while training or resuming the run in it.

    A second lenet process that would write the same run (two `--resume`s, two sweeps
    over one folder) gets RunBusy at once instead of interleaving checkpoints. The lock
    is flock(2), which the kernel drops when its holder dies, SIGKILL included, so a
    killed run never leaves a stale lock behind as a pid file would. Re-entrant within
    a process (a sweep holds it while it clears a run, then train() takes it again).
    A folder that does not exist is not locked: the caller reports it.
    """
    key = Path(run_dir).resolve()
    if fcntl is None or not key.is_dir():
        yield
        return
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    except OSError as exc:
        raise RunError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunBusy(f"{run_dir} is being trained by another lenet process ({holder}); wait for it to "
                      f"finish, or stop it and continue with `lenet train --resume {run_dir}`") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {platform.node()}, since {datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # closing the only descriptor releases the flock


def remove_stray_temp_files(run_dir: Path) -> list[str]:
    """Delete the temporary files of atomic writes that a killed process never renamed.

    They are never read (the file they were to replace is intact), only litter; call
    this while holding run_lock, so no live writer of this run owns one.
    """
    removed = []
    for path in sorted(Path(run_dir).glob(TEMP_PATTERN)):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run directory for a fresh start, keeping its lock file (held by the caller)."""
    for path in Path(run_dir).iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_metrics(run_dir: Path, rows: list[Mapping[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv rewritten whole: each epoch appears exactly once,
    even after a resume that repeats an epoch the killed run had half done."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buffer = io.StringIO()
    extra = sorted({k for r in rows for k in r} - set(METRIC_COLUMNS))
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS + extra, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


def read_metrics(run_dir: Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; [] for a run that has none yet when ``missing_ok``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        if missing_ok:
            return []
        raise RunError(f"{run_dir}: no metrics.jsonl; is this a lenet run directory?")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunError(f"{path}:{number}: not valid JSON") from None
    return rows


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: no config.yaml; is this a lenet run directory?")
    try:
        data = load_file(path)
    except ConfigError as exc:  # a tag, an alias, a syntax error: edited or damaged
        raise RunError(f"{exc}; the run's config.yaml was edited or damaged") from None
    return validate(data, f"config file {path}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record(device: torch.device, seed: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "lenet": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": __import__("numpy").__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": git_commit(),
        "seed": seed,
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
        record["gpu"] = torch.cuda.get_device_name(device)
    ray = sys.modules.get("ray")  # trained as a Ray task or Tune trial: which node, for the record
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        record["host"] = platform.node()
        record["ray_node_id"] = ray.get_runtime_context().get_node_id()
        record["nice"] = os.nice(0)  # Ray lowers its workers' priority unless told not to
        gpus = ray.get_gpu_ids()
        if gpus:  # the GPU(s) Ray gave this task; --gpus-per-run 0.25: four runs share one
            record["ray_gpu_ids"] = [str(g) for g in gpus]
    return record


def default_run_name(cfg: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.preset or cfg.model.name}-{data_name(cfg)}-{stamp}"


def create_run_dir(out: Path, name: str, exist_ok: bool = False) -> Path:
    """A new run directory; an existing one is an error unless ``exist_ok``."""
    run_dir = Path(out) / name
    # A folder holding only a lock or temp files (a run killed before its first write) is empty.
    leftovers = [p for p in run_dir.iterdir() if p.name != LOCK_FILE and not p.match(TEMP_PATTERN)] \
        if run_dir.is_dir() else []
    if leftovers and not exist_ok:
        raise RunError(
            f"run directory {run_dir} already exists; choose another --name, "
            f"continue it with `lenet train --resume {run_dir}`, or pass --exist-ok to overwrite"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --out") from None
    return run_dir


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories for commands that read them (plot, report): each must hold metrics
    and be a real run, not a dry run's one batch."""
    runs = []
    for p in paths:
        p = Path(p)
        if not (p / "metrics.jsonl").is_file():
            raise RunError(f"{p}: not a run directory (no metrics.jsonl)")
        if is_dry_run(p):
            raise RunError(f"{p}: a dry run (one batch, a smoke test), not a run to plot or report; "
                           "train it without --dry-run")
        runs.append(p)
    return runs


def is_dry_run(run_dir: Path) -> bool:
    return bool(read_json_or_empty(Path(run_dir) / "status.json").get("dry_run"))


def is_run(run_dir: Path) -> bool:
    """A directory a run wrote into (metrics or a model), not an empty one a failed start left."""
    return Path(run_dir).is_dir() and any((Path(run_dir) / f).is_file() for f in
                                          ("metrics.jsonl", "model.safetensors", "config.yaml"))


def resolve_run(text: str | Path, out: str | Path = "runs") -> tuple[Path, str | None]:
    """The run directory a command-line argument means, and a note when it was inferred.

    An existing path is itself. "latest" is the newest run under ``out``. Otherwise the
    argument is a name prefix (``d2l`` or ``runs/d2l`` for runs/d2l-fashion-mnist-<time>):
    the newest run whose name starts with it. Dry runs and empty folders are not runs.
    """
    path = Path(text)
    if path.exists():
        return path, None
    if str(text) == "latest":
        parent, prefix = Path(out), ""
    else:
        parent = path.parent if path.parent != Path(".") else Path(out)
        prefix = path.name
    candidates = [d for d in parent.glob(f"{prefix}*") if is_run(d) and not is_dry_run(d)] if parent.is_dir() else []
    if not candidates:
        what = f"no run under {parent}/" if str(text) == "latest" else f"{text}: no such model file or run directory"
        raise RunError(f"{what}; train one first (lenet train --name NAME), or give a run directory "
                       f"(`ls {parent}` lists them)")
    newest = max(candidates, key=_trained_at)
    others = len(candidates) - 1
    note = (f"{text}: using {newest}" + (f", the newest of {others + 1} matching runs" if others else ""))
    return newest, note


def _trained_at(run_dir: Path) -> float:
    """When a run last trained (its status or metrics), not when something read it
    (an evaluation writes eval.json into the run)."""
    times = [(run_dir / f).stat().st_mtime for f in ("status.json", "metrics.jsonl", "config.yaml")
             if (run_dir / f).is_file()]
    return max(times, default=0.0)


def remove_failed_start(run_dir: Path) -> None:
    """Remove the folder of a run that failed before writing anything (only its lock and
    temporary files in it), so it does not look like a run; call it holding the lock."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.name != LOCK_FILE and not p.match(TEMP_PATTERN) for p in run_dir.iterdir()):
        return
    with contextlib.suppress(OSError):
        for path in run_dir.iterdir():
            path.unlink()
        run_dir.rmdir()


def data_name(cfg: RunConfig) -> str:
    """The data a run trained on, as a folder name takes it: the catalogue's name, or the
    path's last part in safe characters."""
    if not cfg.data.path:
        return cfg.data.dataset
    stem = data_spec(cfg).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", stem)[:40] or "data"
