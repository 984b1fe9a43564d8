"""Small model files for the int8 tests: any LeNet variant, random weights and batch-norm
statistics, saved as `lenet train` saves them (so load_model and the CLI take them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lenet.configuration.build import build_config
from lenet.model.network import LeNet
from lenet.store.models import MODEL_FILE, load_model, save_model

# Every activation with a pooling kind, and batch norm on half of them: 7 models cover the kinds.
KINDS = [("sigmoid", "avg", False), ("tanh", "max", True), ("relu", "max", True), ("leaky_relu", "avg", True),
         ("gelu", "none", False), ("silu", "max", False), ("elu", "avg", True)]


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine parameters far from the identity, so folding them matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)


def write_model(folder: Path, seed: int = 0, dataset: str = "fashion-mnist", normalize: str = "standard",
                **model: Any) -> Path:
    """A run directory holding model.safetensors of the lenet5 variant ``model`` (fields)."""
    overrides = {f"model.{k}": v for k, v in model.items()}
    cfg = build_config("d2l", overrides={"data.dataset": dataset, "data.normalize": normalize, "device": "cpu",
                                         **overrides})
    torch.manual_seed(seed)
    net = LeNet(cfg.model).eval()
    randomize_batch_norm(net, seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class {i}" for i in range(cfg.model.num_classes)]
    save_model(folder / MODEL_FILE, net, cfg, tuple(names), extra={"test_accuracy": None})
    return folder


def trained(folder: Path, **model: Any):
    """write_model, loaded as every command loads a model (a TrainedModel)."""
    return load_model(write_model(folder, **model))


def random_images(count: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    """uint8 images, with an all-black and an all-white one first (the extremes of every range)."""
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    images[0], images[1] = 0, 255
    return images
