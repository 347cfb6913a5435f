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


# --- Many conditions of one network, sharing what does not change -------------------------------


@dataclass(frozen=True)
class ConditionOutput:
    predictions: torch.Tensor  # int64 (N,)
    losses: torch.Tensor  # float32 (N,), per-example cross-entropy


# Stages that keep an all-zero channel all zero (and act per channel): a silenced unit's mask can
# be applied after them, so they too are computed once and shared by every condition.
ZERO_PRESERVING = (nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Identity)


def _cut(condition, links: list[str], model: nn.Module) -> tuple[int, bool]:
    """Where the work for `condition` can start: (p, masked) where p is how many links of the base
    network's chain are shared (their output is cached), and masked tells whether the condition
    can run as masks on the base network (silencing only) instead of its own modified copy."""
    from ..models import silence_point

    if not condition.changed_layers:
        return len(links), True
    masked = not condition.replace
    first = len(links)
    modules = dict(model.named_modules())
    for layer in condition.changed_layers:
        point = silence_point(model, layer) if masked else layer
        for i, link in enumerate(links):
            if point == link and masked:  # a whole link: its output is cached, then masked
                j = i + 1
                while j < len(links) and type(modules[links[j]]) in ZERO_PRESERVING:
                    j += 1
                first = min(first, j)
                break
            if point == link:
                first = min(first, i)
                break
            if point.startswith(link + "."):  # inside a block: cache the block's input
                first = min(first, i)
                break
    return first, masked


def _masks(conditions, model: nn.Module, repeat: int) -> dict[str, torch.Tensor]:
    """Per silence point, a (K * repeat, units) 0/1 mask for K stacked conditions."""
    from ..studies import layer_units
    from ..models import silence_point

    points: dict[str, torch.Tensor] = {}
    for k, condition in enumerate(conditions):
        for layer, units in condition.silence:
            point = silence_point(model, layer)
            if point not in points:
                points[point] = torch.ones(len(conditions), layer_units(model, layer))
            points[point][k, list(units)] = 0
    return {p: m.repeat_interleave(repeat, dim=0) for p, m in points.items()}


def _apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask.to(x.device, x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))


def _run(links, x: torch.Tensor) -> torch.Tensor:
    for _, module in links:
        x = module(x)
    return x


def _per_example_bytes(links, x: torch.Tensor) -> int:
    """Bytes one example needs running `links` on `x` (1 example): 3x its largest activation."""
    largest = x[:1].numel()
    x = x[:1]
    for _, module in links:
        x = module(x)
        largest = max(largest, x.numel())
    return 3 * 4 * largest


@torch.no_grad()
def evaluate_conditions(
    conditions,
    context,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    budget_mb: float,
    device: str | torch.device,
    apply=None,
) -> dict[str, ConditionOutput]:
    """Predictions and per-example losses of every condition on (images (N, ...), labels (N,)).

    Activations up to the first changed layer are computed once per image chunk and shared by
    all conditions that start there; silencing conditions run as masks, several conditions
    stacked along the batch in one forward of the unchanged network; conditions that change
    weights run their own modified copy from the first changed layer on. `budget_mb` bounds the
    activations held at once. `apply(condition, context)` builds a modified copy (default:
    `interventions.apply_condition`).
    """
    from ..studies import apply_condition
    from ..models import chain

    apply = apply or apply_condition
    device = torch.device(device)
    budget = budget_mb * 2**20
    n = len(images)
    plans: dict[str, list] = {}  # base -> [(p, masked, condition)]
    links_of = {}
    for condition in conditions:
        if condition.base not in links_of:
            base = context.network(condition.base).eval().to(device)
            links_of[condition.base] = (base, [name for name, _ in chain(base)])
        base, links = links_of[condition.base]
        p, masked = _cut(condition, links, base)
        plans.setdefault(condition.base, []).append((p, masked, condition))

    preds = {c.name: torch.empty(n, dtype=torch.long) for c in conditions}
    losses = {c.name: torch.empty(n) for c in conditions}
    for base_name, plan in plans.items():
        base = context.network(base_name)
        links = chain(base)
        probe = images[:1].to(device)
        chunk = max(1, min(n, int(budget // _per_example_bytes(links, probe))))
        cuts = sorted({p for p, _, _ in plan})
        for start in range(0, n, chunk):
            x = images[start : start + chunk].to(device)
            y = labels[start : start + chunk].to(device)
            b = len(x)
            done = 0
            for p in cuts:
                x = _run(links[done:p], x)  # advance the shared prefix to this cut
                done = p
                group = [(m, c) for q, m, c in plan if q == p]
                for masked, c in group:
                    if not masked:  # its own copy, built per chunk so only one is held at a time
                        out = _run(chain(apply(c, context).to(device))[p:], x)
                        _store(preds, losses, [c], out, y, start)
                masked_group = [c for m, c in group if m]
                if not masked_group:
                    continue
                row_bytes = _per_example_bytes(links[p:], x) if p < len(links) else 4 * x[:1].numel()
                k_max = max(1, int(budget // (row_bytes * b)))
                for i in range(0, len(masked_group), k_max):
                    batch = masked_group[i : i + k_max]
                    _store(preds, losses, batch, _masked_forward(batch, base, links, p, x), y, start)
    return {c.name: ConditionOutput(preds[c.name], losses[c.name]) for c in conditions}


def _masked_forward(batch, base: nn.Module, links, p: int, x: torch.Tensor) -> torch.Tensor:
    """Run `len(batch)` silencing conditions at once: the cached activations x (B, ...) stacked
    K times, masked at the cut and through hooks on later silence points."""
    masks = _masks(batch, base, 1)  # (K, units) per silence point
    k = len(batch)
    names = [name for name, _ in links]
    cached = [pt for pt in masks if pt in names and names.index(pt) < p]  # silenced before the cut
    if cached:  # one broadcast multiply stacks the K conditions and silences their units
        mask = masks.pop(cached[0]).to(x.device, x.dtype)
        stacked = (x.unsqueeze(0) * mask.view(k, 1, -1, *([1] * (x.dim() - 2)))).flatten(0, 1)
    else:
        stacked = x.repeat(k, *([1] * (x.dim() - 1)))
    masks = {point: m.repeat_interleave(len(x), dim=0) for point, m in masks.items()}
    modules = dict(base.named_modules())
    handles = [
        modules[point].register_forward_hook(lambda m, i, o, mask=mask: _apply_mask(o, mask))
        for point, mask in masks.items()
    ]
    try:
        return _run(links[p:], stacked)
    finally:
        for h in handles:
            h.remove()


def _store(preds, losses, batch, logits: torch.Tensor, y: torch.Tensor, start: int) -> None:
    k = len(batch)
    logits = logits.float().view(k, len(y), -1)
    for i, condition in enumerate(batch):
        end = start + len(y)
        preds[condition.name][start:end] = logits[i].argmax(1).cpu()
        losses[condition.name][start:end] = F.cross_entropy(logits[i], y, reduction="none").cpu()
