"""Batched evaluation of a model on a split held as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # int64 (N,), predicted class per example
    correct: torch.Tensor  # bool (N,)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = 1024, amp: bool = False
) -> torch.Tensor:
    """images (N, C, H, W) or (N, D) -> logits (N, classes) in float32, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(model(batch).float())
    model.train(was_training)
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1024,
    amp: bool = False,
) -> Evaluation:
    """Mean cross-entropy, accuracy and per-example predictions of `model` on (images, labels)."""
    logits = predict_logits(model, images, batch_size, amp)
    labels = labels.to(logits.device)
    predictions = logits.argmax(1)
    correct = predictions == labels
    return Evaluation(
        loss=F.cross_entropy(logits, labels).item(),
        accuracy=correct.float().mean().item(),
        predictions=predictions.cpu(),
        correct=correct.cpu(),
    )
