"""Run: what lenet.train returns, the trained model and everything known about its training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration.run import RunConfig
from ..store.models import save_model
from ..store.recorder import FINISHED
from ..use.evaluation import evaluate as evaluate_run


@dataclass
class Run:
    """A trained (or interrupted, or diverged) run, in memory or in its run directory."""

    config: RunConfig
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch (metrics.jsonl)
    run_dir: Path | None = None  # None: trained in memory
    status: str = FINISHED
    class_names: tuple[str, ...] = ()
    speed: dict[str, Any] = field(default_factory=dict)  # the precision and layout it ran with, and why

    @property
    def test_accuracy(self) -> float | None:
        return self.history[-1].get("test_accuracy") if self.history else None

    def plot(self, title: str | None = None):
        """The chapter's curves (train loss, train acc, [val acc], test acc) as a matplotlib Figure."""
        from ..use.figures import curves_figure  # matplotlib: loaded only to plot

        label = self.run_dir.name if self.run_dir else (self.config.name or self.config.preset or "run")
        return curves_figure([(label, self.history)], title=title or label)

    def save(self, path: str | Path) -> Path:
        """The model as a .safetensors file that lenet.load, predict, serve and export read."""
        return save_model(Path(path), self.model, self.config, self.class_names,
                               extra={"test_accuracy": self.test_accuracy, "epochs": len(self.history),
                                      "speed": self.speed})

    def evaluate(self, **options: Any):
        """lenet.evaluate(this run): see lenet.use.evaluation.evaluate."""
        return evaluate_run(self, **options)

    def __repr__(self) -> str:
        where = str(self.run_dir) if self.run_dir else "in memory"
        acc = f", test accuracy {self.test_accuracy:.4f}" if self.test_accuracy is not None else ""
        return f"Run({where}, {self.config.model.name}, {len(self.history)} epoch(s), {self.status}{acc})"
