"""Speed: the record of how a run computes on this machine, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Speed:
    """The speed switches a run uses, "auto" resolved (policy.resolve_speed), with the reason."""

    precision: str  # fp32 | bf16 | tf32
    channels_last: bool
    reason: str = ""
    micro_batch: int = 0  # images per forward/backward part of a step; 0: the whole batch at once
    allocator: str = ""  # how the CPU's malloc was set (allocator.py); "" elsewhere
    fused_layers: bool = False  # the forward's rewritten layers (fused.py)
    parallel_halves: bool = False  # each batch's two halves at once on two threads (halves.py)
    compile: bool = False  # torch.compile of the forward
    cuda_graphs: bool = False  # the whole step recorded as a CUDA graph (graphs.py)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last, "reason": self.reason,
                "micro_batch": self.micro_batch, "allocator": self.allocator, "fused_layers": self.fused_layers,
                "parallel_halves": self.parallel_halves, "compile": self.compile, "cuda_graphs": self.cuda_graphs}

    @classmethod
    def from_dict(cls, record: dict[str, Any], allocator: str | None = None) -> Speed:
        """A recorded choice (``to_dict``: a checkpoint's, a benchmark's); ``allocator``: this
        process's malloc setting in place of the recorded one. Records from before
        micro-batches, fused layers or halves had none; an empty one is float32, NCHW."""
        return cls(str(record.get("precision", "fp32")), bool(record.get("channels_last", False)),
                   str(record.get("reason", "")), int(record.get("micro_batch", 0)),
                   str(record.get("allocator", "")) if allocator is None else allocator,
                   bool(record.get("fused_layers", False)), bool(record.get("parallel_halves", False)),
                   bool(record.get("compile", False)), bool(record.get("cuda_graphs", False)))

    def describe(self, batch_size: int | None = None) -> str:
        """What the steps compute with, as the log's first line and the benchmarks print it:
        "bf16, channels-last, micro-batches of 128, fused layers". Micro-batches are named
        only where they split ``batch_size`` (a batch of 128 in parts of 128 is whole)."""
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels-last")
        if self.micro_batch > 0 and (batch_size is None or self.micro_batch < batch_size):
            parts.append(f"micro-batches of {self.micro_batch}")
        if self.parallel_halves:
            parts.append("two halves at once")
        if self.fused_layers:
            parts.append("fused layers")
        if self.compile:
            parts.append("compiled")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        return ", ".join(parts)
