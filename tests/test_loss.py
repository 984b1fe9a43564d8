"""lenet.training.loss: torch's cross-entropy of the logits, or Keras' of clipped probabilities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lenet.configuration.build import build_config
from lenet.training.loss import cross_entropy
from lenet.training.run import train


def keras_sparse_categorical_crossentropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keras 3's torch backend (nn.sparse_categorical_crossentropy, from_logits=False) written out."""
    output = probabilities / probabilities.sum(-1, keepdim=True)
    output = torch.clip(output, 1e-7, 1.0 - 1e-7)
    return F.nll_loss(torch.log(output), labels, reduction="none")


def logits_of_every_kind() -> torch.Tensor:
    """(6, 10) logits: moderate ones, and ones whose target probability is below 1e-7 or above 1 - 1e-7."""
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    logits[2, 3] = 40.0  # label 3: certain and right (p > 1 - 1e-7)
    logits[3, 5] = 40.0  # label 0: certain and wrong (p < 1e-7)
    return logits


LABELS = torch.tensor([1, 4, 3, 0, 9, 2])


def test_no_clip_is_torchs_cross_entropy():
    logits = logits_of_every_kind()
    assert torch.equal(cross_entropy(logits, LABELS), F.cross_entropy(logits, LABELS))
    assert cross_entropy(logits, LABELS, 0.1) == pytest.approx(float(F.cross_entropy(logits, LABELS,
                                                                                      label_smoothing=0.1)))


def test_clip_is_kerass_loss_and_gradient():
    ours, theirs = logits_of_every_kind().requires_grad_(), logits_of_every_kind().requires_grad_()
    cross_entropy(ours, LABELS, clip=1e-7, reduction="sum").backward()
    keras_sparse_categorical_crossentropy(theirs.softmax(-1), LABELS).sum().backward()
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)
    # The examples outside [1e-7, 1 - 1e-7] teach nothing; torch's loss would learn from both.
    assert ours.grad[2].abs().max() == 0 and ours.grad[3].abs().max() == 0 and ours.grad[0].abs().max() > 0
    torchs = logits_of_every_kind().requires_grad_()
    F.cross_entropy(torchs, LABELS, reduction="sum").backward()
    assert torchs.grad[3].abs().max() > 0.5


def test_clip_keeps_the_shapes_and_label_smoothing():
    logits = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(1))  # (K, B, C): K stacked models
    labels = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(2))
    clipped = cross_entropy(logits, labels, 0.1, clip=1e-7)
    assert clipped.shape == (3,)
    # Nothing near the clip here: the same as torch's smoothed loss.
    assert torch.allclose(clipped, cross_entropy(logits, labels, 0.1), atol=1e-6)


def test_a_run_trains_on_the_loss_its_config_names(tiny_data_dir):
    """keras-v2 on raw pixels starts with most target probabilities under 1e-7: with
    Keras' clip those examples give no gradient, and the first epoch goes differently."""
    losses = {}
    for clip in (1e-7, 0.0):
        cfg = build_config("keras-v2", overrides=[f"data.data_dir={tiny_data_dir}", "data.normalize=raw",
                                                  f"optim.probability_clip={clip}", "train.epochs=1", "device=cpu",
                                                  f"name=clip{clip}"])
        losses[clip] = train(cfg, out="runs").history[0]["train_loss"]
    assert losses[1e-7] != pytest.approx(losses[0.0], rel=1e-3)
