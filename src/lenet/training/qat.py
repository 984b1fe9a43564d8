"""lenet.quantize: int8 post-training quantisation, and quantisation-aware fine-tuning
(QAT) for when the drop is too big.

The quantisation itself is lenet.use.quantize; this module adds what is training: a
short fine-tune of the folded network with the int8 rounding simulated (fake-quantised
weights and tensors, gradients passed straight through), at the ranges calibrated
before it, so the final int8 model is quantised with the ranges it trained for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.datasets import load_data
from ..errors import ConfigError, RunError
from ..store.models import IN_MEMORY, load_model
from ..use.int8_file import INT8_FILE, save_int8
from ..use.quantize import (CALIBRATION_IMAGES, Folded, Quantized, accuracy, calibration_images, float_predictions,
                            fold, ptq)

QAT_LR = 1e-4  # Adam; a tenth of the chapter's Keras rate: the weights only settle onto the int8 grid
QAT_BATCH = 256


def finetune(folded: Folded, ranges: dict[str, tuple[float, int]], images: torch.Tensor, labels: torch.Tensor,
             normalize: Any, epochs: int = 1, lr: float = QAT_LR, batch_size: int = QAT_BATCH,
             seed: int = 0) -> list[float]:
    """Fine-tune ``folded`` in place with the quantisation simulated; the mean loss of each epoch.

    ``images``: uint8 (N, C, H, W) training images, ``labels`` (N,); Adam with the rate
    falling to 0 on a cosine, no augmentation, the batch order seeded."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(folded.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    losses = []
    folded.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(folded(normalize(images[batch]), ranges), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(images))
    folded.eval()
    return losses


def quantize(target: Any, *, qat: bool = False, epochs: int = 1, lr: float = QAT_LR,
             calibration: int = CALIBRATION_IMAGES, data_dir: str | Path | None = None,
             out: str | Path | None = None, seed: int = 0, verbose: bool = False) -> Quantized:
    """int8 model of a trained run (a Run, a run directory or a model file), reported.

    Ranges come from ``calibration`` training images (never the test set); ``qat`` adds
    ``epochs`` of fine-tuning on the training set. Float and int8 accuracy are measured on
    the whole test set. The model is written to ``out`` (default: model-int8.safetensors
    beside the model file; nowhere for a run held only in memory)."""
    if qat and epochs < 1:
        raise ConfigError(f"QAT needs at least one epoch; got {epochs}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"the QAT learning rate must be a positive number; got {lr}")
    trained = load_model(target, "cpu")
    cfg = trained.config
    data = load_data(cfg, data_dir)
    chosen = calibration_images(data.train.images, calibration, seed)
    int8, cal = ptq(trained, chosen, seed=seed)
    test = data.test
    float_accuracy = accuracy(float_predictions(trained, test.images), test.labels)
    ptq_accuracy = accuracy(int8.predict(test.images), test.labels)
    qat_accuracy = None
    if qat:
        if verbose:
            print(f"float32 {float_accuracy:.4f}, int8 after PTQ {ptq_accuracy:.4f}; fine-tuning {epochs} epoch(s)")
        folded = fold(trained.model)
        losses = finetune(folded, cal.ranges, data.train.images, data.train.labels, trained.normalize, epochs,
                          lr, seed=seed)
        int8, _ = ptq(trained, chosen, ranges=cal.ranges, folded=folded, seed=seed)
        qat_accuracy = accuracy(int8.predict(test.images), test.labels)
        if verbose:
            print(f"QAT: {epochs} epoch(s), loss {' -> '.join(f'{x:.4f}' for x in losses)}; int8 {qat_accuracy:.4f}")
    float_bytes = 4 * sum(p.numel() for p in trained.model.parameters())
    result = Quantized(int8, None, float_accuracy, ptq_accuracy, qat_accuracy, len(test), float_bytes, cal,
                       epochs if qat else 0)
    int8.info.update({"float_accuracy": float_accuracy, "ptq_accuracy": ptq_accuracy, "qat_accuracy": qat_accuracy,
                      "int8_accuracy": result.int8_accuracy, "test_images": len(test),
                      "calibration": cal.to_dict(), "qat": {"epochs": epochs, "lr": lr} if qat else None})
    result.path = _write(int8, trained.path, out)
    return result


def _write(int8: Any, model_path: Path, out: str | Path | None) -> Path | None:
    if out is None:
        if str(model_path) == IN_MEMORY:
            return None
        out = model_path.parent / INT8_FILE if model_path.suffix == ".safetensors" else model_path / INT8_FILE
    out = Path(out)
    if out.is_dir():
        out = out / INT8_FILE
    if not out.parent.is_dir():
        raise RunError(f"cannot write {out}: folder {out.parent} does not exist")
    return save_int8(out, int8)
