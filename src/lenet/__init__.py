"""lenet: the LeNet chapter of Dive into Deep Learning as a fast, reproducible tool.

    import lenet
    cfg = lenet.config("keras-v2", epochs=3)      # validated as `lenet train` validates
    run = lenet.train(cfg)                        # in memory; out="runs" for a run directory
    report = lenet.evaluate(run)                  # accuracy, per class, confusion, mistakes
    run.plot()                                    # the chapter's curves, a matplotlib Figure

The names below load on first use, so ``import lenet`` (and the ``lenet`` command's
start-up) does not pay for torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

# public name -> the module that defines it
_EXPORTS = {
    "config": "api", "load": "api", "summary": "api", "ModelSummary": "api",
    "train": "training.run", "resume": "training.run", "Run": "training.result",
    "evaluate": "use.evaluation", "Evaluation": "use.evaluation",
    "load_dataset": "data.datasets", "load_data": "data.datasets", "Dataset": "data.datasets", "Split": "data.datasets",
    "Normalizer": "data.datasets",
    "Predictor": "use.predict",
    "activations": "use.inspection", "filters": "use.inspection", "augment_figure": "use.inspection",
    "RunConfig": "configuration.run", "PRESETS": "configuration.presets",
    "ModelConfig": "model.network", "LeNet": "model.network", "create_model": "model.network",
    "list_models": "model.network",
    "train_many": "training.run", "quantize": "training.qat", "Quantized": "use.quantize",
    "LenetError": "errors", "ConfigError": "errors", "DataError": "errors", "RunError": "errors",
    "UsageError": "errors", "DivergedError": "errors", "Interrupted": "errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
