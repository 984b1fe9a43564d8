"""The training objective, defined once for one model and for K stacked models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                  reduction: str = "mean", clip: float = 0.0) -> torch.Tensor:
    """Cross-entropy per model, in float32 whatever the forward ran in: logits (B, C) and
    labels (B,) give (), logits (K, B, C) and labels (K, B) give (K,). ``reduction``: the
    batch's "mean" (training) or "sum" (evaluation adds batches up). Label smoothing
    spreads eps of the target mass over all classes (Szegedy et al. 2016). ``clip`` > 0:
    of the softmax probabilities clipped to [clip, 1 - clip], as Keras computes it on a
    softmax layer's output, so an example outside gives no gradient."""
    if clip > 0:
        log_p = logits.float().softmax(-1).clamp(clip, 1.0 - clip).log()  # (..., B, C)
        losses = -(1.0 - label_smoothing) * log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        losses = losses - label_smoothing * log_p.mean(-1) if label_smoothing else losses
        return losses.mean(-1) if reduction == "mean" else losses.sum(-1)
    if logits.dim() == 2 and reduction == "mean":
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    losses = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), label_smoothing=label_smoothing,
                             reduction="none").view(labels.shape)
    return losses.mean(-1) if reduction == "mean" else losses.sum(-1)
