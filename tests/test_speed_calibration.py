"""lenet.speed.calibration and allocator: this machine's step times, measured once and
kept; glibc's malloc set for reuse."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
import torch

from lenet.speed import calibration, policy
from lenet.speed.allocator import tune_cpu_allocator
from lenet.speed.config import SpeedConfig
from lenet.speed.forward import EVAL_BATCH_CPU, EVAL_BATCH_GPU, eval_batch_size

CPU = torch.device("cpu")


@pytest.mark.parametrize("bf16_units", [False, True])
def test_the_measurement_is_real_and_kept_per_machine(bf16_units):
    speedups = calibration.cpu_speedups(bf16_units, rounds=1)
    assert set(speedups) == set(calibration.CANDIDATES if bf16_units else ("fp32", "fp32 micro", "fp32 halves"))
    assert speedups["fp32"] == 1.0  # the baseline
    assert all(0.05 < v < 50 for v in speedups.values())  # timings, whatever this CPU makes of them
    saved = json.loads(calibration.calibration_file().read_text())
    assert saved == {calibration.calibration_key(): speedups}
    assert calibration.cpu_speedups(bf16_units) == speedups  # measured once: the next run reads it


@pytest.mark.slow
def test_a_run_measures_only_where_calibrating_is_on(monkeypatch):
    """The tests run with LENET_CALIBRATE=0; a config that says calibrate: true measures
    (and keeps the figures), one that leaves it unset follows the environment."""
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: False)
    assert calibrating_for(None) == (False, "LENET_CALIBRATE=0")
    policy.resolve_speed(SpeedConfig(), CPU, batch_size=256)
    assert not calibration.calibration_file().exists()
    speed = policy.resolve_speed(SpeedConfig(calibrate=True), CPU, batch_size=256)
    assert calibration.calibration_file().exists()
    assert speed.micro_batch in (0, calibration.MICRO_BATCH_CPU)
    monkeypatch.setenv("LENET_CALIBRATE", "1")
    assert calibrating_for(None) == (True, "")
    assert calibrating_for(False) == (False, "speed.calibrate is false")


def calibrating_for(asked):
    return calibration.calibrating(asked)


MAPPED_BY_A_30_MB_BLOCK = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
if sys.argv[1] == "tuned":
    import lenet.speed.allocator
    lenet.speed.allocator.tune_cpu_allocator()
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblkhd
block = libc.malloc(30 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def test_malloc_is_tuned_once_for_cpu_runs_and_recorded():
    """glibc's mmap threshold pinned at 32 MB: a 30 MB block then comes from the heap,
    which keeps freed memory for reuse, instead of pages mapped for it alone. Read back
    through glibc's statistics in fresh processes (a long-lived one's heap may be unable
    to grow, and glibc then maps anyway), against one where lenet left malloc alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc is Linux's")
    speed = policy.resolve_speed(SpeedConfig(), CPU, batch_size=256)
    assert speed.allocator.startswith("glibc ") and "mmap threshold 32 MB" in speed.allocator
    assert speed.to_dict()["allocator"] == speed.allocator
    assert tune_cpu_allocator() is tune_cpu_allocator()  # once per process
    assert "malloc tuned" in calibration.calibration_key()
    assert policy.resolve_speed(SpeedConfig(), torch.device("meta"), batch_size=256).allocator == ""

    def mapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", MAPPED_BY_A_30_MB_BLOCK, mode], capture_output=True,
                              text=True, check=True)
        return int(done.stdout.split()[-1])

    assert mapped("default") >= 30 << 20  # glibc's own threshold: the block is mapped for itself
    assert mapped("tuned") == 0


def test_evaluation_batches_are_small_on_the_cpu_and_big_elsewhere():
    assert eval_batch_size(None, CPU) == EVAL_BATCH_CPU < EVAL_BATCH_GPU
    assert eval_batch_size(None, torch.device("meta")) == EVAL_BATCH_GPU
    assert eval_batch_size(700, CPU) == 700  # asked for
