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
centred window at (a + w//2, b + w//2). The forwards reuse the original image's activations:
the occluded pixels change only a patch of each early feature map (the footprint grows with
each conv or pool), so up to the layer where that patch covers the whole map only the patch is
recomputed, on a crop of the original activations with the previous patch pasted in. The rest
of the network runs on whole maps, many (image, window position) rows per forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..graph import ELEMENTWISE, fold_batch_norms, logits_of, spatial_params
from ..models import chain


def residual_blocks() -> tuple[type, ...]:
    """torchvision's ResNet blocks (imported lazily: torchvision is slow to import)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


def main_path(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """A residual block's main path in forward order, by name (conv1, bn1, relu, conv2, ...),
    without the final activation that follows the addition."""
    names = ["conv1", "bn1", "relu", "conv2", "bn2"]
    if hasattr(block, "conv3"):  # Bottleneck
        names += ["relu", "conv3", "bn3"]
    return [(n, getattr(block, n)) for n in names]

SUMMARY_COLUMNS = ["image", "label", "window", "baseline_prob", "min_prob", "argmin_y", "argmin_x",
                   "changed_area", "takeover_class"]


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


# --------------------------------------------------------------------------- patch geometry


@dataclass(frozen=True)
class Region:
    """A patch of an (H, W) feature map per occlusion position: rows y..y+h-1, cols x..x+w-1
    (y, x: (P,) long; h, w the same for every position so patches batch together)."""

    y: torch.Tensor
    x: torch.Tensor
    h: int
    w: int
    H: int
    W: int

    @property
    def full(self) -> bool:
        return self.h == self.H and self.w == self.W


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def _affected(lo: torch.Tensor, size: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[torch.Tensor, int]:
    """Output rows a k/s/p/d conv or pool computes from input rows lo..lo+size-1: first row
    (P,) and a common length, shifted back inside 0..n_out-1 so every patch has that length."""
    first = (-_floor_div(-(lo + p - (k - 1) * d), s)).clamp(min=0)  # ceil division
    last = (_floor_div(lo + size - 1 + p, s)).clamp(max=n_out - 1)
    length = min(n_out, max(1, int((last - first + 1).max())) if len(lo) else 1)
    return first.clamp(max=n_out - length), length


def _out_len(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - (k - 1) * d - 1) // s + 1


# --------------------------------------------------------------------------- local operations


class _Pointwise:
    """An elementwise module: patches pass through it unchanged in position."""

    def __init__(self, module: nn.Module):
        self.module = module

    def prepare(self, a: torch.Tensor):
        return self.module(a), None

    def plan(self, region: Region, forced: Region | None = None):
        return region, None

    def patch(self, store, sub, x: torch.Tensor, rin: Region, rout: Region, sel, img) -> torch.Tensor:
        return self.module(x)


class _Spatial:
    """A conv or pool run on crops with no padding: the crop is cut from the original map,
    padded once with the op's padding value, and the input patch is pasted over it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], params, pad_value: float):
        self.fn = fn
        (self.k, self.s, self.p, self.d), self.pad_value = params, pad_value

    def prepare(self, a: torch.Tensor):
        """a (N, C, H, W) -> (output, store): the padded map kept channels-last (N, Hp, Wp, C)."""
        ph, pw = self.p
        store = F.pad(a, (pw, pw, ph, ph), value=self.pad_value).permute(0, 2, 3, 1).contiguous()
        return self.fn(store.permute(0, 3, 1, 2)), store

    def plan(self, region: Region, forced: Region | None = None):
        H = _out_len(region.H, self.k[0], self.s[0], self.p[0], self.d[0])
        W = _out_len(region.W, self.k[1], self.s[1], self.p[1], self.d[1])
        if forced is not None:  # a residual shortcut: computed where the main path is
            assert (forced.H, forced.W) == (H, W), "shortcut and main path disagree on the map size"
            return forced, None
        y, h = _affected(region.y, region.h, self.k[0], self.s[0], self.p[0], self.d[0], H)
        x, w = _affected(region.x, region.w, self.k[1], self.s[1], self.p[1], self.d[1], W)
        return Region(y, x, h, w, H, W), None

    def patch(self, store, sub, x: torch.Tensor, rin: Region, rout: Region, sel, img) -> torch.Tensor:
        """x (B, C, rin.h, rin.w) at rin[sel] -> (B, C', rout.h, rout.w) at rout[sel]."""
        dev = sel.device
        ch = (rout.h - 1) * self.s[0] + (self.k[0] - 1) * self.d[0] + 1
        cw = (rout.w - 1) * self.s[1] + (self.k[1] - 1) * self.d[1] + 1
        top, left = rout.y[sel] * self.s[0], rout.x[sel] * self.s[1]  # crop origin, padded map
        rows = top[:, None] + torch.arange(ch, device=dev)
        cols = left[:, None] + torch.arange(cw, device=dev)
        crop = store[img[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, ch, cw, C)
        u = (rin.y[sel] + self.p[0] - top)[:, None] + torch.arange(rin.h, device=dev)  # patch rows in the crop
        v = (rin.x[sel] + self.p[1] - left)[:, None] + torch.arange(rin.w, device=dev)
        b = torch.arange(len(sel), device=dev)[:, None, None]
        xp = x.permute(0, 2, 3, 1)
        if bool((u >= 0).all() & (u < ch).all() & (v >= 0).all() & (v < cw).all()):
            crop[b, u[:, :, None], v[:, None, :]] = xp  # the patch lies inside the crop: paste it
        else:  # part of the patch is not read (a stride skips it, a pool drops it): keep what is
            keep = ((u >= 0) & (u < ch))[:, :, None] & ((v >= 0) & (v < cw))[:, None, :]
            bb, uu, vv = (t.expand_as(keep)[keep] for t in (b, u[:, :, None], v[:, None, :]))
            crop[bb, uu, vv] = xp[keep]
        return self.fn(crop.permute(0, 3, 1, 2))


class _Identity(_Spatial):
    """A residual block's plain shortcut: a 1x1 crop of its input."""

    def __init__(self):
        super().__init__(lambda t: t, ((1, 1), (1, 1), (0, 0), (1, 1)), 0.0)


class _Block:
    """A torchvision BasicBlock/Bottleneck: main path and shortcut patched separately, the
    shortcut computed over the main path's (larger) patch, then added and activated."""

    def __init__(self, block: nn.Module, main: list, shortcut: list):
        self.block, self.main, self.shortcut = block, main, shortcut

    def prepare(self, a: torch.Tensor):
        stores, x = [], a
        for op in self.main:
            x, st = op.prepare(x)
            stores.append(st)
        s = a
        for op in self.shortcut:
            s, st = op.prepare(s)
            stores.append(st)
        return self.block.relu(x + s), stores

    def plan(self, region: Region, forced: Region | None = None):
        regions = [region]
        for op in self.main:
            regions.append(op.plan(regions[-1])[0])
        out = regions[-1]
        shortcut = [region]
        for i, op in enumerate(self.shortcut):
            shortcut.append(op.plan(shortcut[-1], forced=out if i == 0 else None)[0])
        return out, (regions, shortcut)

    def patch(self, stores, sub, x: torch.Tensor, rin: Region, rout: Region, sel, img) -> torch.Tensor:
        regions, shortcut = sub
        m = x
        for i, op in enumerate(self.main):
            m = op.patch(stores[i], None, m, regions[i], regions[i + 1], sel, img)
        s = x
        for j, op in enumerate(self.shortcut):
            s = op.patch(stores[len(self.main) + j], None, s, shortcut[j], shortcut[j + 1], sel, img)
        return self.block.relu(m + s)


def _local_op(module: nn.Module):
    """The patch-wise version of a module, or None when it is not local (flatten, linear, an
    unknown module): the network is run on whole maps from there on."""
    if isinstance(module, ELEMENTWISE):
        return _Pointwise(module)
    params = spatial_params(module)
    if params is not None:
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            fn = lambda t, m=module: F.conv2d(t, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)  # noqa: E731
            return _Spatial(fn, params, 0.0)
        if isinstance(module, nn.MaxPool2d) and not module.ceil_mode:
            k, s, _, d = params
            return _Spatial(lambda t: F.max_pool2d(t, k, s, 0, d), params, float("-inf"))
        if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and (
            module.count_include_pad or params[2] == (0, 0)
        ):
            k, s, _, _ = params
            div = module.divisor_override
            return _Spatial(lambda t: F.avg_pool2d(t, k, s, 0, False, True, div), params, 0.0)
        return None
    if isinstance(module, residual_blocks()):
        main = [_local_op(m) for _, m in main_path(module)]
        short = [_local_op(m) for m in (module.downsample or [])] or [_Identity()]
        if any(op is None for op in main + short) or not isinstance(short[0], _Spatial):
            return None
        return _Block(module, main, short)
    return None


# --------------------------------------------------------------------------- the engine


class _Engine:
    """The model split into a local prefix (`ops`, run on patches) and the rest (run on whole
    maps). With reuse=False, or a model that is not a Sequential, the prefix is empty."""

    def __init__(self, model: nn.Module, reuse: bool = True):
        self.ops: list = []
        self.modules: list[nn.Module] = [model]
        if reuse and isinstance(model, nn.Sequential):
            self.modules = [m for _, m in chain(model)]
            for module in self.modules:
                op = _local_op(module)
                if op is None:
                    break
                self.ops.append(op)

    def plan(self, rects: torch.Tensor, H: int, W: int) -> tuple[list[Region], list]:
        """Patch regions for the occlusions `rects` (P, 4): the input patch (the window, shifted
        inside the image), then one region per local op, stopping at the first that covers its
        whole map or at the end of the prefix. len(subs) ops are then run on patches."""
        h = min(int((rects[:, 1] - rects[:, 0]).max()), H)
        w = min(int((rects[:, 3] - rects[:, 2]).max()), W)
        regions = [Region(rects[:, 0].clamp(max=H - h), rects[:, 2].clamp(max=W - w), h, w, H, W)]
        subs = []
        for op in self.ops:
            if regions[-1].full:
                break
            region, sub = op.plan(regions[-1])
            regions.append(region)
            subs.append(sub)
        return regions, subs

    def prepare(self, images: torch.Tensor, cut: int, keep: set[int]) -> tuple[list, dict[int, torch.Tensor]]:
        """The original activations the first `cut` ops read, and the maps after i ops for i in
        `keep` (cloned: an in-place module further on must not write into them)."""
        stores, maps, x = [], {}, images
        for i, op in enumerate(self.ops[:cut]):
            if i in keep:
                maps[i] = x.clone()
            x, st = op.prepare(x)
            stores.append(st)
        if cut in keep:
            maps[cut] = x.clone()
        return stores, maps

    def forward(self, images, rects, plan, stores, after, sel, img, fill) -> torch.Tensor:
        """Logits (B, classes) of images[img] occluded by rects[sel] (B rows); `after` is the
        original map where the patches end (unused when they end covering it)."""
        regions, subs = plan
        r0, dev = regions[0], sel.device
        rows = r0.y[sel][:, None] + torch.arange(r0.h, device=dev)
        cols = r0.x[sel][:, None] + torch.arange(r0.w, device=dev)
        rect = rects[sel]
        inside = (((rows >= rect[:, 0:1]) & (rows < rect[:, 1:2]))[:, :, None]
                  & ((cols >= rect[:, 2:3]) & (cols < rect[:, 3:4]))[:, None, :])
        crop = images.permute(0, 2, 3, 1)[img[:, None, None], rows[:, :, None], cols[:, None, :]]
        x = torch.where(inside[..., None], fill, crop).permute(0, 3, 1, 2)  # (B, C, h, w)
        for i, sub in enumerate(subs):
            x = self.ops[i].patch(stores[i], sub, x, regions[i], regions[i + 1], sel, img)
        last = regions[len(subs)]
        if not last.full:  # paste the patch into the original map
            full = after[img].clone()
            rows = last.y[sel][:, None] + torch.arange(last.h, device=dev)
            cols = last.x[sel][:, None] + torch.arange(last.w, device=dev)
            b = torch.arange(len(sel), device=dev)[:, None, None]
            full.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]] = x.permute(0, 2, 3, 1)
            x = full
        if self.ops and x.dim() == 4:  # whole maps from here: channels-last, where oneDNN is fastest
            x = x.contiguous(memory_format=torch.channels_last)
        for module in self.modules[len(subs) :]:
            x = module(x)
        return logits_of(x)


def _largest_row(engine: _Engine, images, rects, plan, stores, after, fill) -> int:
    """Elements of the largest activation one row (one image, one position) creates: the
    input, the map the patches are pasted into, and every leaf module's output."""
    one = torch.zeros(1, dtype=torch.long, device=images.device)
    sizes = [images[0].numel(), after[0].numel()]
    hook = lambda m, i, o: sizes.append(o.numel() if isinstance(o, torch.Tensor) else 0)  # noqa: E731
    leaves = [m for mod in engine.modules for m in mod.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        engine.forward(images, rects, plan, stores, after, one, one, fill)
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def _bytes(tensors) -> int:
    """Bytes of the tensors in a (nested) list."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, (list, tuple, dict)):
        return sum(_bytes(t) for t in (tensors.values() if isinstance(tensors, dict) else tensors))
    return 0


# --------------------------------------------------------------------------- public API


def _fill_vector(fill, channels: int, dtype, device) -> torch.Tensor:
    f = torch.as_tensor(fill, dtype=dtype, device=device).reshape(-1)
    if f.numel() == 1:
        f = f.expand(channels)
    if f.numel() != channels:
        raise ValueError(f"fill has {f.numel()} values for {channels} channels")
    return f.clone()


def _baseline(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int):
    probs, preds = [], []
    for s in range(0, len(images), batch):
        p = torch.softmax(logits_of(model(images[s : s + batch])), 1)
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
) -> dict[str, np.ndarray]:
    """Occlusion maps of `images` (N, C, H, W, normalised) with true `labels` (N,) (see the
    module docstring for the two maps and the window conventions).

    fill: a float or a per-channel (C,) tensor in the normalised space (dataset-mean grey is
    0.0; black is -mean/std). budget_mb bounds memory: rows (image, window position) per
    forward = half the budget / (4 copies of a row's largest activation), and images whose
    original activations are cached at once = half the budget / their size.
    reuse=False runs every occluded image through the whole network (for checking the reuse).

    Returns numpy arrays: inputs (N, C, H, W) float32, labels (N,), windows (nW,), stride,
    fill (C,), baseline_prob (N,), baseline_pred (N,), prob_centred (N, nW, H, W) float32,
    pred_centred (N, nW, H, W) int16, attribution (N, nW, H, W) float32.
    """
    was_training = model.training
    model.eval()
    try:
        return _occlusion_maps(model, images, labels, tuple(int(w) for w in windows), int(stride), fill,
                               budget_mb * 2**20, torch.device(device), reuse)
    finally:
        model.train(was_training)


def _occlusion_maps(model, images, labels, windows, stride, fill, budget, device, reuse):
    if stride < 1 or not windows or any(w < 1 for w in windows):
        raise ValueError("windows and stride must be positive")
    dtype = next(model.parameters()).dtype
    x = images.to(device, dtype)
    y = labels.to(device, torch.long)
    N, C, H, W = x.shape
    fill_v = _fill_vector(fill, C, dtype, device)
    if reuse:  # for speed: batch norms folded into their convolutions, maps in channels-last memory
        model = fold_batch_norms(model)
    engine = _Engine(model, reuse)
    positions = [window_positions(H, W, w, stride) for w in windows]
    rects = [p.rects.to(device) for p in positions]
    plans = [engine.plan(r, H, W) for r in rects]
    cuts = [len(subs) for _, subs in plans]  # ops run on patches, per window
    cut, keep = max(cuts), set(cuts)
    stores1, maps1 = engine.prepare(x[:1], cut, keep)
    group = max(1, int(budget / 2 // max(1, _bytes(stores1) + _bytes(maps1))))  # images per cache
    # rows per forward: 4 live copies of a row's largest activation fit in half the budget
    rows = [max(1, int(budget / 2 // (4 * x.element_size() * _largest_row(
        engine, x[:1], r, plan, stores1, maps1[n], fill_v)))) for r, plan, n in zip(rects, plans, cuts)]

    base_p, base_pred = _baseline(model, x, y, max(rows))
    probs = [torch.empty(N, len(r), dtype=dtype) for r in rects]
    preds = [torch.empty(N, len(r), dtype=torch.long) for r in rects]
    for g0 in range(0, N, group):
        xg, yg = x[g0 : g0 + group], y[g0 : g0 + group]
        stores, maps = engine.prepare(xg, cut, keep)
        for wi, (r, plan, n_cut) in enumerate(zip(rects, plans, cuts)):
            pairs = len(xg) * len(r)
            for s in range(0, pairs, rows[wi]):
                k = torch.arange(s, min(s + rows[wi], pairs), device=device)
                img, sel = k // len(r), k % len(r)  # image-major: several images per forward
                logits = engine.forward(xg, r, plan, stores, maps[n_cut], sel, img, fill_v)
                p = torch.softmax(logits, 1)
                probs[wi][g0 + img.cpu(), sel.cpu()] = p.gather(1, yg[img][:, None])[:, 0].cpu()
                preds[wi][g0 + img.cpu(), sel.cpu()] = p.argmax(1).cpu()

    out_shape = (N, len(windows), H, W)
    prob_c, pred_c = np.empty(out_shape, np.float32), np.empty(out_shape, np.int16)
    attr = np.empty(out_shape, np.float32)
    bp = base_p.cpu()
    for wi, pos in enumerate(positions):
        prob_c[:, wi] = probs[wi][:, pos.centred].float().numpy()
        pred_c[:, wi] = preds[wi][:, pos.centred].numpy().astype(np.int16)
        attr[:, wi] = _attribution(bp, probs[wi], pos, H, W).numpy()
    return {
        "inputs": images.detach().cpu().float().numpy(),
        "labels": labels.detach().cpu().numpy(),
        "windows": np.asarray(windows, dtype=np.int64),
        "stride": np.int64(stride),
        "fill": fill_v.cpu().float().numpy(),
        "baseline_prob": bp.float().numpy(),
        "baseline_pred": base_pred.cpu().numpy(),
        "prob_centred": prob_c,
        "pred_centred": pred_c,
        "attribution": attr,
    }


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
            rows.append([n, int(maps["labels"][n]), int(w), float(maps["baseline_prob"][n]), float(p[arg]),
                         arg // W, arg % W, float(changed.mean()), takeover])
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
