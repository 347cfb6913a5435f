"""Occlusion sensitivity (Zeiler & Fergus 2014; study 3): how the prediction changes when a
square of the image is covered with a fill value.

`occlusion_maps` computes two things per image and window size w, from one set of forwards:

  * centred maps: for every pixel (i, j), the softmax probability of the true class and the
    argmax class with the w x w window centred at (i, j) filled, clipped at the image borders.
    The window covers rows i - w//2 .. i - w//2 + w - 1 (and the same for columns), so an odd
    window is symmetric and an even one reaches one pixel further up/left than down/right.
  * the attribution of captum.attr.Occlusion (sliding_window_shapes=(C, w, w),
    strides=(C, stride, stride)): windows with their top-left corner at multiples of `stride`,
    stepping until the image is covered (so with a stride that does not divide H - w, the last
    row/column of windows is cut off at the border, as in Captum); a pixel's attribution is
    the mean over the windows covering it of p_true(original) - p_true(occluded), and 0 where
    no window covers it (a window larger than the image, or stride > w, which Captum refuses).

Every distinct occluded image is evaluated once: a Captum window with top-left (a, b) is the
centred window at (a + w//2, b + w//2). The forwards reuse the original image's activations on
the traced graph (`engine.shared.footprint`): the occluded pixels change only a patch of each
early feature map (the footprint grows with each conv or pool as its receptive field says), so
up to where that patch covers the whole map only the patch is recomputed, on a crop of the
original activations with the previous patch pasted in. The rest of the network runs on whole
maps, many (image, window position) rows per forward. A network that cannot be traced runs every
occluded image whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..graph import fold_batch_norms, graph_of
from ..readout import Readout
from .shared import footprint_forward, footprint_stores, footprints, inside, row_bytes, store_bytes

SUMMARY_COLUMNS = [
    "image",
    "label",
    "window",
    "baseline_prob",
    "min_prob",
    "argmin_y",
    "argmin_x",
    "changed_area",
    "takeover_class",
]


# --------------------------------------------------------------------------- window positions


def centred_spans(n: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows lo..hi-1 (each (n,)) covered by a window of size w centred at each of n rows,
    clipped to 0..n-1: lo = i - w//2, hi = lo + w."""
    lo = torch.arange(n) - w // 2
    return lo.clamp(min=0), (lo + w).clamp(max=n)


def captum_spans(n: int, w: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows covered by Captum's sliding windows: starts 0, stride, ... until the last start is
    >= n - w (that last window may be cut off at n); none when w > n."""
    if w > n:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    lo = torch.arange(-(-(n - w) // stride) + 1) * stride
    return lo, (lo + w).clamp(max=n)


@dataclass(frozen=True)
class Positions:
    """The distinct occluded rectangles of one window size.

    rects (P, 4): rows r0..r1-1 and cols c0..c1-1 of each; centred (H, W): index into rects of
    the window centred at each pixel; grid (nA, nB): index of Captum's window (a, b);
    grid_rows (2, nA) and grid_cols (2, nB): those windows' spans.
    """

    rects: torch.Tensor
    centred: torch.Tensor
    grid: torch.Tensor
    grid_rows: torch.Tensor
    grid_cols: torch.Tensor


def window_positions(H: int, W: int, w: int, stride: int) -> Positions:
    """Centred windows at every pixel plus Captum's grid, each distinct rectangle once."""
    index: dict[tuple[int, int, int, int], int] = {}

    def ids(rows, cols) -> torch.Tensor:
        out = [[index.setdefault((r0, r1, c0, c1), len(index)) for c0, c1 in zip(*cols)] for r0, r1 in zip(*rows)]
        return torch.tensor(out, dtype=torch.long).reshape(len(rows[0]), len(cols[0]))

    as_lists = lambda spans: tuple(s.tolist() for s in spans)  # noqa: E731
    centred = ids(as_lists(centred_spans(H, w)), as_lists(centred_spans(W, w)))
    g_rows, g_cols = captum_spans(H, w, stride), captum_spans(W, w, stride)
    grid = ids(as_lists(g_rows), as_lists(g_cols))
    rects = torch.tensor(list(index), dtype=torch.long).reshape(-1, 4)
    return Positions(rects, centred, grid, torch.stack(g_rows), torch.stack(g_cols))


# --------------------------------------------------------------------------- public API


def _fill_vector(fill, channels: int, dtype, device) -> torch.Tensor:
    f = torch.as_tensor(fill, dtype=dtype, device=device).reshape(-1)
    if f.numel() == 1:
        f = f.expand(channels)
    if f.numel() != channels:
        raise ValueError(f"fill has {f.numel()} values for {channels} channels")
    return f.clone()


def _baseline(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, readout: Readout):
    probs, preds = [], []
    for s in range(0, len(images), batch):
        p = torch.softmax(readout(model(images[s : s + batch])), 1)
        probs.append(p.gather(1, labels[s : s + batch, None])[:, 0])
        preds.append(p.argmax(1))
    return torch.cat(probs), torch.cat(preds)


def _attribution(base: torch.Tensor, probs: torch.Tensor, pos: Positions, H: int, W: int) -> torch.Tensor:
    """Captum's occlusion attribution (N, H, W): the mean over the grid windows covering each
    pixel of base - p(occluded); probs (N, P). 0 where no window covers a pixel."""
    if pos.grid.numel() == 0:
        return torch.zeros(len(base), H, W)
    diff = (base[:, None, None] - probs[:, pos.grid]).double()  # (N, nA, nB)
    ar_h, ar_w = torch.arange(H), torch.arange(W)
    rows = ((ar_h >= pos.grid_rows[0][:, None]) & (ar_h < pos.grid_rows[1][:, None])).double()  # (nA, H)
    cols = ((ar_w >= pos.grid_cols[0][:, None]) & (ar_w < pos.grid_cols[1][:, None])).double()  # (nB, W)
    total = torch.einsum("ay,nab,bx->nyx", rows, diff, cols)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).float()


@torch.inference_mode()
def occlusion_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    windows: Sequence[int],
    *,
    stride: int,
    fill: float | torch.Tensor,
    budget_mb: float,
    device: str | torch.device,
    reuse: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Occlusion maps of `images` (N, C, H, W, normalised) with true `labels` (N,) (see the
    module docstring for the two maps and the window conventions).

    fill: a float or a per-channel (C,) tensor in the normalised space (dataset-mean grey is
    0.0; black is -mean/std). budget_mb bounds memory: rows (image, window position) per
    forward = half the budget / (4 copies of a row's largest activation), and images whose
    original activations are cached at once = half the budget / their size.
    reuse=False runs every occluded image through the whole network (for checking the reuse).
    shard=(i, n): only the i-th of n contiguous blocks of the forwards (each as in the whole run,
    so every number is bit-identical), as partial arrays that `merge_shards` joins.

    Returns numpy arrays: inputs (N, C, H, W) float32, labels (N,), windows (nW,), stride,
    fill (C,), baseline_prob (N,), baseline_pred (N,), prob_centred (N, nW, H, W) float32,
    pred_centred (N, nW, H, W) int16, attribution (N, nW, H, W) float32.
    """
    was_training = model.training
    model.eval()
    try:
        return _occlusion_maps(
            model,
            images,
            labels,
            tuple(int(w) for w in windows),
            int(stride),
            fill,
            budget_mb * 2**20,
            torch.device(device),
            reuse,
            shard,
        )
    finally:
        model.train(was_training)


def _occlusion_maps(model, images, labels, windows, stride, fill, budget, device, reuse, shard):
    if stride < 1 or not windows or any(w < 1 for w in windows):
        raise ValueError("windows and stride must be positive")
    dtype = next(model.parameters()).dtype
    x = images.to(device, dtype)
    y = labels.to(device, torch.long)
    N, C, H, W = x.shape
    fill_v = _fill_vector(fill, C, dtype, device)
    positions = [window_positions(H, W, w, stride) for w in windows]
    rects = [p.rects.to(device) for p in positions]
    graph = None
    readout = Readout.of(model)  # the folded copy below carries no spec
    if reuse:  # for speed: batch norms folded into their convolutions, maps in channels-last memory
        model = fold_batch_norms(model)
        graph = graph_of(model, x[:1])
        graph = graph if graph.traced else None
    # per window: the positions in groups, each with its footprint and the occluded images per forward
    if graph is not None:
        plans = [
            [(i, f, max(1, int(budget / 2 // max(1, row_bytes(graph, f))))) for i, f in footprints(graph, r)]
            for r in rects
        ]
        found = [f for groups in plans for _, f, _ in groups]
        group = max(1, int(budget / 2 // max(1, store_bytes(graph, found))))  # images whose maps are kept at once
    else:  # every occluded image whole: 4 copies of the input per row, and 64x for its activations
        per_forward = max(1, int(budget / 2 // (4 * 64 * x[0].numel() * x.element_size())))
        plans = [[(torch.arange(len(r), device=device), None, per_forward)] for r in rects]
        group = N
    base_p, base_pred = _baseline(model, x, y, max(step for groups in plans for _, _, step in groups), readout)
    probs = [torch.empty(N, len(r), dtype=dtype) for r in rects]
    preds = [torch.empty(N, len(r), dtype=torch.long) for r in rects]
    done = [torch.zeros(N, len(r), dtype=torch.bool) for r in rects]
    # every forward, in order: (first image of its group, window, position group, first row)
    work = [
        (g0, wi, gi, s)
        for g0 in range(0, N, group)
        for wi in range(len(rects))
        for gi, (index, _, step) in enumerate(plans[wi])
        for s in range(0, min(group, N - g0) * len(index), step)
    ]
    i, n = shard or (0, 1)
    stores_of = None  # the group whose stores are held
    for g0, wi, gi, s in work[i * len(work) // n : (i + 1) * len(work) // n]:
        xg, yg = x[g0 : g0 + group], y[g0 : g0 + group]
        if graph is not None and stores_of != g0:
            stores, stores_of = footprint_stores(graph, found, xg), g0
        index, found_here, step = plans[wi][gi]
        sub = rects[wi][index]
        pairs = len(xg) * len(index)
        k = torch.arange(s, min(s + step, pairs), device=device)
        img, sel = k // len(index), k % len(index)  # image-major: several images per forward
        if found_here is not None:
            output = footprint_forward(graph, found_here, stores, sub, sel, img, fill_v)
        else:
            output = _whole_forward(model, xg, sub, sel, img, fill_v)
        p = torch.softmax(readout(output), 1)
        at = (g0 + img.cpu(), index[sel].cpu())
        probs[wi][at] = p.gather(1, yg[img][:, None])[:, 0].cpu()
        preds[wi][at] = p.argmax(1).cpu()
        done[wi][at] = True
    if shard is not None:
        part = {"labels": labels.detach().cpu().numpy(), "windows": np.asarray(windows, dtype=np.int64)}
        part |= {"stride": np.int64(stride), "fill": fill_v.cpu().float().numpy(), "shape": np.asarray([H, W])}
        part |= {"baseline_prob": base_p.cpu().numpy(), "baseline_pred": base_pred.cpu().numpy()}
        for wi in range(len(rects)):
            part |= {
                f"prob_w{wi}": probs[wi].numpy(),
                f"pred_w{wi}": preds[wi].numpy(),
                f"done_w{wi}": done[wi].numpy(),
            }
        return part
    return _finish(
        images.detach().cpu().float().numpy(),
        labels.detach().cpu().numpy(),
        windows,
        stride,
        fill_v,
        base_p,
        base_pred,
        probs,
        preds,
        positions,
    )


def merge_shards(parts: list[dict], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The partial arrays of the shards of one `occlusion_maps` call (`shard=(i, n)`, all n) ->
    its arrays, `inputs` among them; each forward's results from the one shard that ran it."""
    first = parts[0]
    H, W = (int(v) for v in first["shape"])
    windows = tuple(int(w) for w in first["windows"])
    probs, preds = [], []
    for wi in range(len(windows)):
        done = np.stack([p[f"done_w{wi}"] for p in parts])
        if not (done.sum(0) == 1).all():
            raise ValueError(f"occlusion shards: window {windows[wi]}: not every position computed exactly once")
        prob, pred = parts[0][f"prob_w{wi}"].copy(), parts[0][f"pred_w{wi}"].copy()
        for part, ran in zip(parts, done):
            prob[ran], pred[ran] = part[f"prob_w{wi}"][ran], part[f"pred_w{wi}"][ran]
        probs.append(torch.from_numpy(prob))
        preds.append(torch.from_numpy(pred))
    positions = [window_positions(H, W, w, int(first["stride"])) for w in windows]
    base_p, base_pred = torch.from_numpy(first["baseline_prob"]), torch.from_numpy(first["baseline_pred"])
    fill = torch.from_numpy(first["fill"])
    return _finish(
        inputs, first["labels"], windows, int(first["stride"]), fill, base_p, base_pred, probs, preds, positions
    )


def _finish(inputs, labels, windows, stride, fill_v, base_p, base_pred, probs, preds, positions) -> dict:
    """The maps' arrays (see `occlusion_maps`) from the occluded probabilities and predictions
    per window position (N, P) and the baseline's."""
    N, (H, W) = len(labels), inputs.shape[-2:]
    out_shape = (N, len(windows), H, W)
    prob_c, pred_c = np.empty(out_shape, np.float32), np.empty(out_shape, np.int16)
    attr = np.empty(out_shape, np.float32)
    bp = base_p.cpu()
    for wi, pos in enumerate(positions):
        prob_c[:, wi] = probs[wi][:, pos.centred].float().numpy()
        pred_c[:, wi] = preds[wi][:, pos.centred].numpy().astype(np.int16)
        attr[:, wi] = _attribution(bp, probs[wi], pos, H, W).numpy()
    return {
        "inputs": inputs,
        "labels": labels,
        "windows": np.asarray(windows, dtype=np.int64),
        "stride": np.int64(stride),
        "fill": fill_v.cpu().float().numpy(),
        "baseline_prob": bp.float().numpy(),
        "baseline_pred": base_pred.cpu().numpy(),
        "prob_centred": prob_c,
        "pred_centred": pred_c,
        "attribution": attr,
    }


def _whole_forward(model: nn.Module, images: torch.Tensor, rects: torch.Tensor, sel, img, fill) -> torch.Tensor:
    """The output of images[img] with rects[sel] filled, each occluded image through the whole network."""
    x = images[img]
    filled = inside(rects[sel], torch.arange(x.shape[2], device=x.device), torch.arange(x.shape[3], device=x.device))
    return model(torch.where(filled[:, None], fill.view(1, -1, 1, 1), x))


def summary(maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per image and window (SUMMARY_COLUMNS): the baseline probability of the true
    class, the lowest occluded probability and where (the first in row-major order), the
    fraction of window positions whose prediction differs from the baseline prediction, and
    the most frequent class among those (the lowest on ties; -1 when none changed)."""
    prob, pred = maps["prob_centred"], maps["pred_centred"]
    N, nW, H, W = prob.shape
    rows = []
    for n in range(N):
        for wi, w in enumerate(maps["windows"]):
            p, c = prob[n, wi].reshape(-1), pred[n, wi].reshape(-1).astype(np.int64)
            changed = c != maps["baseline_pred"][n]
            arg = int(p.argmin())
            takeover = int(np.bincount(c[changed]).argmax()) if changed.any() else -1
            rows.append(
                [
                    n,
                    int(maps["labels"][n]),
                    int(w),
                    float(maps["baseline_prob"][n]),
                    float(p[arg]),
                    arg // W,
                    arg % W,
                    float(changed.mean()),
                    takeover,
                ]
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def select_images(labels: torch.Tensor, n: int, per_class: bool = False, seed: int = 0) -> torch.Tensor:
    """Indices (sorted LongTensor) of the images to occlude: the first n, or n drawn at random
    (torch.Generator seeded `seed`) from each class present (all of a class with fewer)."""
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if not per_class:
        return torch.arange(min(n, len(labels)))
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero()[:, 0]
        picked.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)
