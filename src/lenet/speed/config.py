"""The ``speed:`` section of a run config: how a run computes, never what it computes.

Every switch gives the same function of the same weights, up to float rounding;
"auto" and None are decided per machine when the run starts (policy.resolve_speed)
and the choice is recorded in environment.json and the checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..configuration.base import Strict
from ..errors import ConfigError


class SpeedConfig(Strict):
    precision: Literal["auto", "fp32", "bf16", "tf32"] = Field(
        "auto", description="auto: bf16 autocast where this CPU runs it faster (measured), else fp32; "
                            "tf32: CUDA matmuls in TF32")
    amp: bool = Field(False, description="bfloat16 autocast for forward passes: precision bf16 by another name")
    channels_last: bool | None = Field(None, description="NHWC memory layout; None: on for the CPU, where it is "
                                                         "faster, off elsewhere")
    fused_layers: bool | None = Field(None, description=(
        "the same function computed faster on the CPU (speed/fused.py): the first conv block by pixel phases, "
        "the flatten in channels-last order, few-channel convs' input gradient as a transposed conv; None: on "
        "for channels-last CPU runs without compile"))
    micro_batch: int | None = Field(None, ge=0, le=1_000_000, description=(
        "forward and backward in parts of this many images, gradients summed (the same update up to "
        "rounding), so activations stay in the CPU's caches; None: where this CPU measured them faster, for "
        "networks without batch norm; 0: off"))
    parallel_halves: bool | None = Field(None, description=(
        "CPU: each batch's two halves forward and backward at once, each on half the threads, gradients "
        "summed (the same update up to rounding; speed/halves.py); None: where this CPU measured them within "
        "3% of the fastest step or faster, for networks without batch norm or dropout"))
    compile: bool = Field(False, description="torch.compile the model; the first steps pay the compile time")
    cuda_graphs: bool = Field(False, description="CUDA only: record the whole step as a CUDA graph and replay it")
    calibrate: bool | None = Field(None, description=(
        "CPU: decide what auto and None leave open from this machine's step times, measured once and cached "
        "in ~/.cache/lenet/cpu-speed.json; false: never measure (float32, whole batches); None: "
        "$LENET_CALIBRATE (0 or 1), else true"))


# Switches the stacked step of K runs at once (training.stacked) does not honour:
# torch.compile and CUDA graphs capture one model's graph, channels-last has no layout
# for the (K, B, C, H, W) batch, and it takes each batch whole and its own layers.
NOT_STACKED = ("channels_last", "compile", "cuda_graphs", "micro_batch", "fused_layers", "parallel_halves")

# The fields that lenet 0.2 kept in the train section: its config files, run
# directories, model files and sweep specs still say train.micro_batch and so on.
MOVED_FROM_TRAIN = tuple(f for f in SpeedConfig.model_fields if f != "calibrate")


def move_speed_fields(tree: dict[str, Any]) -> dict[str, Any]:
    """A config tree with 0.2's ``train.<speed switch>`` moved to ``speed.<switch>``; the
    same switch given in both places is a ConfigError naming both."""
    train, speed = tree.get("train"), tree.get("speed") or {}
    if not (isinstance(train, dict) and isinstance(speed, dict)) or not any(f in train for f in MOVED_FROM_TRAIN):
        return tree  # nothing to move, or a section that is no mapping: validation says so
    train, speed = dict(train), dict(speed)
    for name in MOVED_FROM_TRAIN:
        if name in train:
            value = train.pop(name)
            if speed.get(name, value) != value:
                raise ConfigError(f"train.{name} (lenet 0.2's name) and speed.{name} are both set; "
                                  f"keep speed.{name} only")
            speed[name] = value
    return {**tree, "train": train, "speed": speed}
