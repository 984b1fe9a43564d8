"""TensorBoard scalars for every run on disk, so ``tensorboard --logdir runs`` shows
single runs, sweeps and searches side by side.

The event files lie in the run directory itself (``runs/<run>/events.out.tfevents.*``),
so TensorBoard names each run by its path under the log dir. Tags are grouped by
quantity (``accuracy/train``, ``accuracy/val``, ``accuracy/test``, ``loss/...``, ``lr``,
``speed/examples_per_second``), the step is the epoch, and every epoch is flushed at
once: a run killed later keeps the scalars of the epochs it finished.

The writer is optional (``pip install tensorboard``). Without it a run trains as
before; a run that asked for scalars (train.tensorboard: true) says so in one line
(stderr once per process, and in each run's train.log), the others say nothing.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

# metrics.jsonl key -> TensorBoard tag
TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val", "test_accuracy": "accuracy/test",
    "test_accuracy_tta": "accuracy/test_tta", "val_accuracy_tta": "accuracy/val_tta",
    "test_accuracy_raw": "accuracy/test_raw", "val_accuracy_raw": "accuracy/val_raw",
    "lr": "lr", "examples_per_second": "speed/examples_per_second", "epoch_seconds": "speed/epoch_seconds",
}
MISSING = ("TensorBoard scalars are not written: the tensorboard package is not installed "
           "(pip install tensorboard, or pip install -e '.[ray]'); train.tensorboard unset writes them only "
           "where it is")
_said_missing = False


class Scalars:
    """One run's TensorBoard writer; ``Scalars.open`` returns None where there is none."""

    def __init__(self, writer: Any):
        self._writer = writer

    @classmethod
    def open(cls, run_dir: Path, first_epoch: int, log: Callable[[str], None],
             asked: bool = False) -> "Scalars | None":
        """A writer appending to ``run_dir``'s events from ``first_epoch`` on: steps at or
        after it that an earlier, killed process wrote are purged, so a resumed run
        shows each epoch once. None without the package (said where ``asked``)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if asked:
                say_missing_once()
                log(MISSING)
            return None
        purge = first_epoch if first_epoch > 1 else None
        if purge:
            after_earlier_events(run_dir)
        return cls(SummaryWriter(log_dir=str(run_dir), purge_step=purge, flush_secs=3600))

    def epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, tag in TAGS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def after_earlier_events(run_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after the run's others.

    TensorBoard reads a run's event files in name order, and a name starts with its
    creation time in whole seconds, then host, process id and the process's writer
    count. A resumed run's file made in the same second as the interrupted one's can
    sort before it (writer 10 against 9 compares as text) and show epochs 3, 4 before
    1, 2. So a resume that would write within the second of an earlier file waits for
    the next second (under 1 s)."""
    stamps = [int(m.group(1)) for path in run_dir.glob("events.out.tfevents.*")
              if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", path.name))]
    if stamps:
        time.sleep(max(0.0, max(stamps) + 1 - time.time()))


def writer_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def say_missing_once() -> None:
    """MISSING on stderr, once per process."""
    global _said_missing
    if not _said_missing:
        print(f"lenet: {MISSING}", file=sys.stderr)
        _said_missing = True


def stay_quiet_about_missing() -> None:
    """For worker processes whose parent has already said it (a sweep's pool)."""
    global _said_missing
    _said_missing = True


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of a run's event files, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
