"""Devices, seeds and the speed choices made per machine (runtime.resolve_speed)."""

from __future__ import annotations

import json

import pytest
import torch

import lenet.speed.policy as runtime
from lenet.errors import UsageError
from lenet.configuration.run import TrainConfig

CPU = torch.device("cpu")


def test_channels_last_is_on_for_the_cpu_unless_asked_otherwise():
    assert runtime.resolve_speed(TrainConfig(), CPU).channels_last is True
    assert runtime.resolve_speed(TrainConfig(channels_last=False), CPU).channels_last is False
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).channels_last is False


@pytest.mark.parametrize("hardware, measured, deterministic, expected", [
    (False, {"bf16": 3.0}, False, "fp32"),  # no bf16 units: never measured, never bf16
    (True, {"bf16": 1.5}, False, "bf16"),  # bf16 units that pay: bf16
    (True, {"bf16": 1.05}, False, "fp32"),  # inside the 10% margin: fp32
    (True, {"bf16": 1.5}, True, "fp32"),  # --deterministic: no measured choice
    # bf16 against float32's best step: micro-batches made fp32 as fast
    (True, {"bf16": 1.5, "fp32 micro": 1.45}, False, "fp32"),
    (True, {"bf16 micro": 1.8, "fp32 micro": 1.45}, False, "bf16"),
])
def test_auto_precision_takes_bf16_only_where_it_was_measured_faster(monkeypatch, hardware, measured,
                                                                     deterministic, expected):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: hardware)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 micro": 1.0, "fp32 halves": 0.5, "bf16": 1.0,
                                 "bf16 micro": 1.0, "bf16 halves": 0.5, **measured})
    speed = runtime.resolve_speed(TrainConfig(deterministic=deterministic), CPU)
    assert speed.precision == expected
    if hardware and not deterministic:
        assert "x fp32 on this CPU" in speed.reason


def test_asked_and_recorded_precisions_win():
    assert runtime.resolve_speed(TrainConfig(precision="bf16"), CPU).precision == "bf16"
    assert runtime.resolve_speed(TrainConfig(amp=True), CPU).precision == "bf16"  # --amp is --precision bf16
    resumed = runtime.resolve_speed(TrainConfig(precision="fp32"), CPU,
                                    {"precision": "bf16", "channels_last": False, "reason": "auto"})
    assert (resumed.precision, resumed.channels_last) == ("bf16", False)  # a resume continues as it began
    with pytest.raises(UsageError, match="tf32 needs a CUDA device"):
        runtime.resolve_speed(TrainConfig(precision="tf32"), CPU)


def test_a_speed_record_round_trips_and_reads_as_the_log_prints_it():
    speed = runtime.Speed("bf16", True, "auto: bf16 measured at 1.33x fp32 on this CPU", 128, "glibc", True)
    assert runtime.Speed.from_dict(speed.to_dict()) == speed
    halves = runtime.Speed("fp32", True, "asked for", 0, "", True, parallel_halves=True)
    assert runtime.Speed.from_dict(halves.to_dict()) == halves
    assert halves.describe(256) == "fp32, channels-last, two halves at once, fused layers"
    assert runtime.Speed.from_dict(speed.to_dict(), allocator="here").allocator == "here"  # this process's malloc
    assert speed.describe(256) == "bf16, channels-last, micro-batches of 128, fused layers"
    assert speed.describe(128) == "bf16, channels-last, fused layers"  # parts as big as the batch split nothing
    # A record from before micro-batches and fused layers, and an empty one (a baseline's)
    old = runtime.Speed.from_dict({"precision": "fp32", "channels_last": True, "reason": "auto"})
    assert (old.micro_batch, old.fused_layers, old.describe()) == (0, False, "fp32, channels-last")
    assert runtime.Speed.from_dict({}).describe() == "fp32"


@pytest.mark.parametrize("measured, expected", [
    ({"fp32 micro": 1.4}, runtime.MICRO_BATCH_CPU),  # measured faster: on
    ({"fp32 micro": 1.02}, 0),  # inside the 5% margin: whole batches
    ({"fp32 micro": 0.8}, 0),
])
def test_micro_batches_are_taken_where_they_measured_faster(monkeypatch, measured, expected):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: False)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 halves": 0.5, **measured})
    assert runtime.resolve_speed(TrainConfig(), CPU).micro_batch == expected


@pytest.mark.parametrize("measured, halves, micro", [
    ({"fp32 halves": 1.0}, True, 0),  # as fast as whole batches: a tie goes to halves
    ({"fp32 halves": 0.98}, True, 0),  # inside the timing noise
    ({"fp32 halves": 0.9}, False, 0),  # clearly slower
    ({"fp32 halves": 1.3, "fp32 micro": 1.4}, False, runtime.MICRO_BATCH_CPU),  # micro-batches faster still
    ({"fp32 halves": 1.4, "fp32 micro": 1.4}, True, 0),  # the two never combine
])
def test_halves_are_taken_where_they_measured_as_fast_as_the_best(monkeypatch, two_threads, measured, halves,
                                                                    micro):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: False)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 micro": 0.9, **measured})
    speed = runtime.resolve_speed(TrainConfig(), CPU)
    assert (speed.parallel_halves, speed.micro_batch) == (halves, micro)


def test_bf16_is_weighed_by_its_best_step_halves_included(monkeypatch, two_threads):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: True)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 micro": 0.9, "fp32 halves": 1.0,
                                 "bf16": 1.0, "bf16 micro": 0.9, "bf16 halves": 1.5})
    speed = runtime.resolve_speed(TrainConfig(), CPU)
    assert (speed.precision, speed.parallel_halves) == ("bf16", True)
    assert "halves measured at 1.50x the best other step" in speed.reason  # recorded in environment.json
    assert runtime.resolve_speed(TrainConfig(parallel_halves=False), CPU).precision == "fp32"  # 1.0 against 1.0


def test_precision_is_weighed_by_the_step_forms_the_run_can_take(monkeypatch, two_threads):
    """What the user fixed is the only form compared: forced halves weigh bf16 by its
    halves, micro-batches turned off leave their timing out."""
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: True)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 micro": 1.4, "fp32 halves": 1.0,
                                 "bf16": 1.2, "bf16 micro": 1.3, "bf16 halves": 1.2})
    assert runtime.resolve_speed(TrainConfig(), CPU).precision == "fp32"  # fp32 micro 1.4 is the best
    assert runtime.resolve_speed(TrainConfig(parallel_halves=True), CPU).precision == "bf16"  # 1.2 against 1.0
    assert runtime.resolve_speed(TrainConfig(micro_batch=0), CPU).precision == "bf16"  # 1.2 against 1.0


def test_halves_only_where_they_can_run(monkeypatch, two_threads):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: False)
    runtime.record_cpu_speedups({"fp32": 1.0, "fp32 micro": 0.9, "fp32 halves": 1.2})
    assert runtime.resolve_speed(TrainConfig(), CPU).parallel_halves is True
    assert runtime.resolve_speed(TrainConfig(), CPU, batch_norm=True).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(), CPU, dropout=True).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(batch_size=100), CPU).parallel_halves is False  # halves under 64
    assert runtime.resolve_speed(TrainConfig(deterministic=True), CPU).parallel_halves is False  # not measured
    assert runtime.resolve_speed(TrainConfig(compile=True), CPU).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(micro_batch=64), CPU).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(parallel_halves=False), CPU).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).parallel_halves is False  # not a CPU
    # Asked for: taken even where not measured faster (deterministic too: they change no bit)...
    assert runtime.resolve_speed(TrainConfig(parallel_halves=True, deterministic=True), CPU).parallel_halves
    # ...and refused, saying why, where they cannot run.
    for train, kwargs, why in [
        (TrainConfig(parallel_halves=True), {"dropout": True}, "dropout masks"),
        (TrainConfig(parallel_halves=True), {"batch_norm": True}, "statistics per half"),
        (TrainConfig(parallel_halves=True, batch_size=100), {}, "too small to halve"),
        (TrainConfig(parallel_halves=True, micro_batch=64), {}, "--micro-batch 64"),
        (TrainConfig(parallel_halves=True, compile=True), {}, "--compile"),
    ]:
        with pytest.raises(UsageError, match=why):
            runtime.resolve_speed(train, CPU, **kwargs)
    with pytest.raises(UsageError, match="a CPU path"):
        runtime.resolve_speed(TrainConfig(parallel_halves=True), torch.device("meta"))
    torch.set_num_threads(1)
    assert runtime.resolve_speed(TrainConfig(), CPU).parallel_halves is False
    with pytest.raises(UsageError, match="one thread"):
        runtime.resolve_speed(TrainConfig(parallel_halves=True), CPU)
    # A checkpoint from before halves resumes as it began; one with them keeps them.
    old = {"precision": "fp32", "channels_last": True, "reason": "auto"}
    assert runtime.resolve_speed(TrainConfig(), CPU, old).parallel_halves is False
    assert runtime.resolve_speed(TrainConfig(), CPU, old | {"parallel_halves": True}).parallel_halves is True
    # ...on the CPU: a CPU run resumed on another device goes on without them.
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta"),
                                 old | {"parallel_halves": True}).parallel_halves is False


def test_micro_batches_only_where_a_batch_can_be_split():
    """(conftest pins micro-batches as measured faster.)"""
    assert runtime.resolve_speed(TrainConfig(), CPU).micro_batch == runtime.MICRO_BATCH_CPU
    assert runtime.resolve_speed(TrainConfig(), CPU, batch_norm=True).micro_batch == 0
    assert runtime.resolve_speed(TrainConfig(batch_size=128), CPU).micro_batch == 0  # nothing to split
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).micro_batch == 0  # not a CPU
    assert runtime.resolve_speed(TrainConfig(deterministic=True), CPU).micro_batch == 0  # no measured choice
    assert runtime.resolve_speed(TrainConfig(micro_batch=0), CPU).micro_batch == 0
    assert runtime.resolve_speed(TrainConfig(micro_batch=32), CPU).micro_batch == 32
    with pytest.raises(UsageError, match="batch norm would take its statistics per part"):
        runtime.resolve_speed(TrainConfig(micro_batch=32), CPU, batch_norm=True)
    with pytest.raises(UsageError, match="does not combine with --cuda-graphs"):
        runtime.resolve_speed(TrainConfig(micro_batch=32, cuda_graphs=True), CPU)
    # A checkpoint from before micro-batches resumes as it began: whole batches.
    old = runtime.resolve_speed(TrainConfig(), CPU, {"precision": "fp32", "channels_last": True})
    assert old.micro_batch == 0
    assert runtime.resolve_speed(TrainConfig(), CPU, old.to_dict() | {"micro_batch": 64}).micro_batch == 64


MAPPED_BY_A_30_MB_BLOCK = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
if sys.argv[1] == "tuned":
    import lenet.speed.policy
    lenet.speed.policy.tune_cpu_allocator()
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
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc is Linux's")
    speed = runtime.resolve_speed(TrainConfig(), CPU)
    assert speed.allocator.startswith("glibc ") and "mmap threshold 32 MB" in speed.allocator
    assert speed.to_dict()["allocator"] == speed.allocator
    assert runtime.tune_cpu_allocator() is runtime.tune_cpu_allocator()  # once per process
    assert "malloc tuned" in runtime.calibration_key()
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).allocator == ""

    def mapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", MAPPED_BY_A_30_MB_BLOCK, mode], capture_output=True,
                              text=True, check=True)
        return int(done.stdout.split()[-1])

    assert mapped("default") >= 30 << 20  # glibc's own threshold: the block is mapped for itself
    assert mapped("tuned") == 0


def test_evaluation_batches_are_small_on_the_cpu_and_big_elsewhere():
    assert runtime.eval_batch_size(None, CPU) == runtime.EVAL_BATCH_CPU < runtime.EVAL_BATCH_GPU
    assert runtime.eval_batch_size(None, torch.device("meta")) == runtime.EVAL_BATCH_GPU
    assert runtime.eval_batch_size(700, CPU) == 700  # asked for


@pytest.mark.parametrize("bf16_units", [False, True])
def test_the_measurement_is_real_and_kept_per_machine(monkeypatch, bf16_units):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: bf16_units)
    runtime.calibration_file().unlink()
    speedups = runtime.cpu_speedups(rounds=1)
    assert set(speedups) == set(runtime.CANDIDATES if bf16_units else ("fp32", "fp32 micro", "fp32 halves"))
    assert speedups["fp32"] == 1.0  # the baseline
    assert all(0.05 < v < 50 for v in speedups.values())  # timings, whatever this CPU makes of them
    saved = json.loads(runtime.calibration_file().read_text())
    assert saved == {runtime.calibration_key(): speedups}
    assert runtime.cpu_speedups() == speedups  # measured once: the next run reads it


def test_device_names_are_checked():
    assert runtime.resolve_device("cpu") == CPU
    with pytest.raises(UsageError, match="not a device"):
        runtime.resolve_device("tpu")
