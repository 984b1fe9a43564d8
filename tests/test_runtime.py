"""Devices, seeds and the speed choices made per machine (runtime.resolve_speed)."""

from __future__ import annotations

import json

import pytest
import torch

import lenet.runtime as runtime
from lenet.errors import UsageError
from lenet.runconfig import TrainConfig

CPU = torch.device("cpu")


def test_channels_last_is_on_for_the_cpu_unless_asked_otherwise():
    assert runtime.resolve_speed(TrainConfig(), CPU).channels_last is True
    assert runtime.resolve_speed(TrainConfig(channels_last=False), CPU).channels_last is False
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).channels_last is False


@pytest.mark.parametrize("hardware, measured, deterministic, expected", [
    (False, 3.0, False, "fp32"),  # no bf16 units: never measured, never bf16
    (True, 1.5, False, "bf16"),  # bf16 units that pay: bf16
    (True, 1.05, False, "fp32"),  # inside the 10% margin: fp32
    (True, 1.5, True, "fp32"),  # --deterministic: no measured choice
])
def test_auto_precision_takes_bf16_only_where_it_was_measured_faster(monkeypatch, hardware, measured,
                                                                     deterministic, expected):
    monkeypatch.setattr(runtime, "fast_bf16_hardware", lambda: hardware)
    runtime.record_bf16_speedup(measured)
    speed = runtime.resolve_speed(TrainConfig(deterministic=deterministic), CPU)
    assert speed.precision == expected
    if hardware and not deterministic:
        assert f"{measured:.2f}x" in speed.reason


def test_asked_and_recorded_precisions_win():
    assert runtime.resolve_speed(TrainConfig(precision="bf16"), CPU).precision == "bf16"
    assert runtime.resolve_speed(TrainConfig(amp=True), CPU).precision == "bf16"  # --amp is --precision bf16
    resumed = runtime.resolve_speed(TrainConfig(precision="fp32"), CPU,
                                    {"precision": "bf16", "channels_last": False, "reason": "auto"})
    assert (resumed.precision, resumed.channels_last) == ("bf16", False)  # a resume continues as it began
    with pytest.raises(UsageError, match="tf32 needs a CUDA device"):
        runtime.resolve_speed(TrainConfig(precision="tf32"), CPU)


def test_micro_batches_are_automatic_on_the_cpu_for_networks_without_batch_norm():
    assert runtime.resolve_speed(TrainConfig(), CPU).micro_batch == runtime.MICRO_BATCH_CPU
    assert runtime.resolve_speed(TrainConfig(), CPU, batch_norm=True).micro_batch == 0
    assert runtime.resolve_speed(TrainConfig(batch_size=128), CPU).micro_batch == 0  # nothing to split
    assert runtime.resolve_speed(TrainConfig(), torch.device("meta")).micro_batch == 0  # not a CPU
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


def test_evaluation_batches_are_small_on_the_cpu_and_big_elsewhere():
    assert runtime.eval_batch_size(None, CPU) == runtime.EVAL_BATCH_CPU < runtime.EVAL_BATCH_GPU
    assert runtime.eval_batch_size(None, torch.device("meta")) == runtime.EVAL_BATCH_GPU
    assert runtime.eval_batch_size(700, CPU) == 700  # asked for


def test_the_measurement_is_real_and_kept_per_machine(tmp_path):
    runtime.calibration_file().unlink()
    ratio = runtime.bf16_speedup(rounds=1)
    assert 0.05 < ratio < 50  # a timing, whatever this CPU makes of bf16
    saved = json.loads(runtime.calibration_file().read_text())
    assert saved == {runtime.calibration_key(): round(ratio, 3)}
    assert runtime.bf16_speedup() == round(ratio, 3)  # measured once: the next run reads it


def test_device_names_are_checked():
    assert runtime.resolve_device("cpu") == CPU
    with pytest.raises(UsageError, match="not a device"):
        runtime.resolve_device("tpu")
