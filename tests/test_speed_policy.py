"""lenet.speed.policy: the speed a run takes, from its config, its device and the step
times measured on this machine (given explicitly here: ``measured=``)."""

from __future__ import annotations

import pytest
import torch

from lenet.errors import UsageError
from lenet.speed import policy
from lenet.speed.calibration import MICRO_BATCH_CPU
from lenet.speed.choice import Speed
from lenet.speed.config import SpeedConfig

CPU = torch.device("cpu")
META = torch.device("meta")  # a device that is not the CPU, on any machine
ALL_FP32 = {"fp32": 1.0, "fp32 micro": 1.0, "fp32 halves": 0.5}


def resolve(device=CPU, *, measured=None, batch_size=256, deterministic=False, batch_norm=False, dropout=False,
            recorded=None, **speed) -> Speed:
    return policy.resolve_speed(SpeedConfig(**speed), device, batch_size=batch_size, deterministic=deterministic,
                                batch_norm=batch_norm, dropout=dropout, recorded=recorded, measured=measured)


def test_channels_last_is_on_for_the_cpu_unless_asked_otherwise():
    assert resolve().channels_last is True
    assert resolve(channels_last=False).channels_last is False
    assert resolve(META).channels_last is False


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
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: hardware)
    table = {**ALL_FP32, "bf16": 1.0, "bf16 micro": 1.0, "bf16 halves": 0.5, **measured}
    speed = resolve(measured=table, deterministic=deterministic)
    assert speed.precision == expected
    if hardware and not deterministic:
        assert "x fp32 on this CPU" in speed.reason


def test_without_a_measurement_auto_stays_float32_and_says_why(monkeypatch):
    """speed.calibrate false (or LENET_CALIBRATE=0, as the tests run): nothing is measured,
    and nothing measured is taken."""
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: True)
    speed = resolve(calibrate=False)
    assert (speed.precision, speed.micro_batch, speed.parallel_halves) == ("fp32", 0, False)
    assert speed.reason == "auto: fp32 (not measured: speed.calibrate is false)"
    assert resolve().reason == "auto: fp32 (not measured: LENET_CALIBRATE=0)"


def test_asked_and_recorded_precisions_win():
    assert resolve(precision="bf16").precision == "bf16"
    assert resolve(amp=True).precision == "bf16"  # --amp is --precision bf16
    resumed = resolve(precision="fp32", recorded={"precision": "bf16", "channels_last": False, "reason": "auto"})
    assert (resumed.precision, resumed.channels_last) == ("bf16", False)  # a resume continues as it began
    with pytest.raises(UsageError, match="tf32 needs a CUDA device"):
        resolve(precision="tf32")
    with pytest.raises(UsageError, match="--cuda-graphs needs a CUDA device"):
        resolve(cuda_graphs=True)


def test_a_speed_record_round_trips_and_reads_as_the_log_prints_it():
    speed = Speed("bf16", True, "auto: bf16 measured at 1.33x fp32 on this CPU", 128, "glibc", True)
    assert Speed.from_dict(speed.to_dict()) == speed
    halves = Speed("fp32", True, "asked for", 0, "", True, parallel_halves=True)
    assert Speed.from_dict(halves.to_dict()) == halves
    assert halves.describe(256) == "fp32, channels-last, two halves at once, fused layers"
    assert Speed.from_dict(speed.to_dict(), allocator="here").allocator == "here"  # this process's malloc
    assert speed.describe(256) == "bf16, channels-last, micro-batches of 128, fused layers"
    assert speed.describe(128) == "bf16, channels-last, fused layers"  # parts as big as the batch split nothing
    # A record from before micro-batches and fused layers, and an empty one (a baseline's)
    old = Speed.from_dict({"precision": "fp32", "channels_last": True, "reason": "auto"})
    assert (old.micro_batch, old.fused_layers, old.describe()) == (0, False, "fp32, channels-last")
    assert Speed.from_dict({}).describe() == "fp32"


@pytest.mark.parametrize("measured, expected", [
    ({"fp32 micro": 1.4}, MICRO_BATCH_CPU),  # measured faster: on
    ({"fp32 micro": 1.02}, 0),  # inside the 5% margin: whole batches
    ({"fp32 micro": 0.8}, 0),
])
def test_micro_batches_are_taken_where_they_measured_faster(monkeypatch, measured, expected):
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: False)
    assert resolve(measured={**ALL_FP32, **measured}).micro_batch == expected


@pytest.mark.parametrize("measured, halves, micro", [
    ({"fp32 halves": 1.0}, True, 0),  # as fast as whole batches: a tie goes to halves
    ({"fp32 halves": 0.98}, True, 0),  # inside the timing noise
    ({"fp32 halves": 0.9}, False, 0),  # clearly slower
    ({"fp32 halves": 1.3, "fp32 micro": 1.4}, False, MICRO_BATCH_CPU),  # micro-batches faster still
    ({"fp32 halves": 1.4, "fp32 micro": 1.4}, True, 0),  # the two never combine
])
def test_halves_are_taken_where_they_measured_as_fast_as_the_best(monkeypatch, two_threads, measured, halves,
                                                                    micro):
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: False)
    speed = resolve(measured={"fp32": 1.0, "fp32 micro": 0.9, **measured})
    assert (speed.parallel_halves, speed.micro_batch) == (halves, micro)


def test_bf16_is_weighed_by_its_best_step_halves_included(monkeypatch, two_threads):
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: True)
    table = {"fp32": 1.0, "fp32 micro": 0.9, "fp32 halves": 1.0, "bf16": 1.0, "bf16 micro": 0.9, "bf16 halves": 1.5}
    speed = resolve(measured=table)
    assert (speed.precision, speed.parallel_halves) == ("bf16", True)
    assert "halves measured at 1.50x the best other step" in speed.reason  # recorded in environment.json
    assert resolve(measured=table, parallel_halves=False).precision == "fp32"  # 1.0 against 1.0


def test_precision_is_weighed_by_the_step_forms_the_run_can_take(monkeypatch, two_threads):
    """What the user fixed is the only form compared: forced halves weigh bf16 by its
    halves, micro-batches turned off leave their timing out."""
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: True)
    table = {"fp32": 1.0, "fp32 micro": 1.4, "fp32 halves": 1.0, "bf16": 1.2, "bf16 micro": 1.3, "bf16 halves": 1.2}
    assert resolve(measured=table).precision == "fp32"  # fp32 micro 1.4 is the best
    assert resolve(measured=table, parallel_halves=True).precision == "bf16"  # 1.2 against 1.0
    assert resolve(measured=table, micro_batch=0).precision == "bf16"  # 1.2 against 1.0


def test_halves_only_where_they_can_run(monkeypatch, two_threads):
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: False)
    table = {"fp32": 1.0, "fp32 micro": 0.9, "fp32 halves": 1.2}
    assert resolve(measured=table).parallel_halves is True
    assert resolve(measured=table, batch_norm=True).parallel_halves is False
    assert resolve(measured=table, dropout=True).parallel_halves is False
    assert resolve(measured=table, batch_size=100).parallel_halves is False  # halves under 64
    assert resolve(measured=table, deterministic=True).parallel_halves is False  # not measured
    assert resolve(measured=table, compile=True).parallel_halves is False
    assert resolve(measured=table, micro_batch=64).parallel_halves is False
    assert resolve(measured=table, parallel_halves=False).parallel_halves is False
    assert resolve(META, measured=table).parallel_halves is False  # not a CPU
    # Asked for: taken even where not measured faster (deterministic too: they change no bit)...
    assert resolve(parallel_halves=True, deterministic=True).parallel_halves
    # ...and refused, saying why, where they cannot run.
    for speed, kwargs, why in [
        ({}, {"dropout": True}, "dropout masks"),
        ({}, {"batch_norm": True}, "statistics per half"),
        ({}, {"batch_size": 100}, "too small to halve"),
        ({"micro_batch": 64}, {}, "--micro-batch 64"),
        ({"compile": True}, {}, "--compile"),
    ]:
        with pytest.raises(UsageError, match=why):
            resolve(parallel_halves=True, **speed, **kwargs)
    with pytest.raises(UsageError, match="a CPU path"):
        resolve(META, parallel_halves=True)
    torch.set_num_threads(1)
    assert resolve(measured=table).parallel_halves is False
    with pytest.raises(UsageError, match="one thread"):
        resolve(parallel_halves=True)
    # A checkpoint from before halves resumes as it began; one with them keeps them.
    old = {"precision": "fp32", "channels_last": True, "reason": "auto"}
    assert resolve(recorded=old).parallel_halves is False
    assert resolve(recorded=old | {"parallel_halves": True}).parallel_halves is True
    # ...on the CPU: a CPU run resumed on another device goes on without them.
    assert resolve(META, recorded=old | {"parallel_halves": True}).parallel_halves is False


def test_micro_batches_only_where_a_batch_can_be_split(monkeypatch):
    monkeypatch.setattr(policy, "fast_bf16_hardware", lambda: False)
    table = {**ALL_FP32, "fp32 micro": 1.4}
    assert resolve(measured=table).micro_batch == MICRO_BATCH_CPU
    assert resolve(measured=table, batch_norm=True).micro_batch == 0
    assert resolve(measured=table, batch_size=128).micro_batch == 0  # nothing to split
    assert resolve(META, measured=table).micro_batch == 0  # not a CPU
    assert resolve(measured=table, deterministic=True).micro_batch == 0  # no measured choice
    assert resolve(measured=table, micro_batch=0).micro_batch == 0
    assert resolve(measured=table, micro_batch=32).micro_batch == 32
    with pytest.raises(UsageError, match="batch norm would take its statistics per part"):
        resolve(micro_batch=32, batch_norm=True)
    with pytest.raises(UsageError, match="does not combine with --cuda-graphs"):
        resolve(META, micro_batch=32, cuda_graphs=True)
    # A checkpoint from before micro-batches resumes as it began: whole batches.
    old = resolve(measured=table, recorded={"precision": "fp32", "channels_last": True})
    assert old.micro_batch == 0
    assert resolve(recorded=old.to_dict() | {"micro_batch": 64}).micro_batch == 64


def test_compile_and_graphs_come_from_the_config_even_on_a_resume():
    assert resolve(compile=True).compile and not resolve().compile
    resumed = resolve(compile=True, recorded={"precision": "fp32", "channels_last": False})
    assert resumed.compile and not resumed.fused_layers  # a record from before lenet 0.3 said neither


def test_the_switches_of_lenet_0_2_are_read_from_the_train_section():
    """Config files, run directories and sweep specs of 0.2 say train.micro_batch."""
    from lenet.configuration.build import build_config
    from lenet.errors import ConfigError

    cfg = build_config("d2l", overrides=["train.micro_batch=0", "train.parallel_halves=false", "train.epochs=2"])
    assert (cfg.speed.micro_batch, cfg.speed.parallel_halves, cfg.train.epochs) == (0, False, 2)
    assert "micro_batch" not in cfg.to_dict()["train"]
    with pytest.raises(ConfigError, match="train.precision .* and speed.precision are both set"):
        build_config("d2l", overrides=["train.precision=fp32", "speed.precision=bf16"])
