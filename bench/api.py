"""knockout from Python on a user's DataLoader vs. Captum on the same loader.

What it measures
----------------
A researcher holds a ResNet-18 and a ``DataLoader`` and asks two questions from a notebook:

  * sweep: every unit of ``layer3.1.conv2`` silenced alone (256 conditions). Ours:
    ``knockout.ablate(model, loader, layers=[LAYER])``, which drains the loader a chunk at a time
    into the shared evaluation (the loader's batches joined or cut to the engine's chunks, never
    one forward per condition and batch). Captum: ``LayerFeatureAblation`` per batch of the same
    loader (one full forward per unit and batch), as ``bench/ablation_sweep.py`` runs it.
  * occlusion: windows 3/5/7/9 at stride 1 slid over the loader's images. Ours:
    ``knockout.occlude(model, loader, fill=0)`` (the centred maps and Captum's attribution from
    the same occluded images); Captum: ``Occlusion`` per batch of the loader (attribution only,
    ``perturbations_per_eval=64``), as ``bench/occlusion.py`` runs it.

Each row is timed three ways in one run: Captum on the loader, the API on the loader, and the
engine on the same images as tensors (what the workflow's jobs and the other benches time:
``evaluate_conditions``, ``occlusion_maps``). ``ratio`` is captum_s / api_s; ``api_vs_engine`` is
engine_s / api_s, the share of the engine's speed the API keeps on a loader (goal >= 0.9: within
10% of the pipeline bench's row). The check: every unit's correct count equal to Captum's (one
example of rounding tolerated, as in ablation_sweep.py) and to the engine's; the occlusion
attributions within 1e-4 of Captum's. The exit status is 1 otherwise.

The ResNet-18 (small stem, 3x32x32) is ``bench/_common.py``'s: seeded random weights with batch
norms and head calibrated so predictions spread over the classes, N(0, 1) images labelled with
its predictions; ``--images`` of them (default 32) for the sweep, ``--occlusion-images`` (default
2) for occlusion, in a ``DataLoader`` of ``--loader-batch`` (default 8).

Output: model, question, images, captum_s, api_s, engine_s, ratio, api_vs_engine, goal_met,
agreement, other_cpu; then as the last line ``min ratio: N.NNx`` (the smallest ratio).
``--out FILE.csv`` also writes the rows.

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/api.py --out bench/results/api.csv     # ~5 min on 2 cores
    .venv/bin/python bench/api.py --quick                          # 8 images, windows 3 and 9
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from _common import Timed, environment, finish, options, resnet_setup, start, wait_for_idle
from ablation_sweep import captum as captum_sweep, captum_model, intact_correct
from occlusion import captum_attribution
from torch.utils.data import DataLoader, TensorDataset

import knockout
from knockout.config import resolve
from knockout.engine import Context, apply_condition, layer_units
from knockout.engine.evaluate import evaluate_conditions
from knockout.engine.occlusion import occlusion_maps
from knockout.studies import filter_ablation, study_type

LAYER = "layer3.1.conv2"
GOAL = 0.9  # the API on a loader keeps at least 90% of the engine's speed on the same images
COLUMNS = [
    "model",
    "question",
    "images",
    "captum_s",
    "api_s",
    "engine_s",
    "ratio",
    "api_vs_engine",
    "goal_met",
    "agreement",
    "other_cpu",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options(quick="8 sweep images, 1 occlusion image, windows 3 and 9")],
    )
    p.add_argument("--images", type=int, default=32, help="sweep images (default 32; --quick: 8)")
    p.add_argument("--occlusion-images", type=int, default=2, help="occlusion images (default 2; --quick: 1)")
    p.add_argument("--windows", default="3,5,7,9", help="occlusion windows (default 3,5,7,9; --quick: 3,9)")
    p.add_argument("--loader-batch", type=int, default=8, help="the DataLoader's batch size (default 8)")
    p.add_argument("--budget-mb", type=float, default=512, help="budget_mb of both of ours (default 512)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.occlusion_images, args.windows = 8, 1, "3,9"
    args.windows = [int(w) for w in args.windows.split(",")]
    return args


def sweep_row(model, images, labels, args, device) -> dict:
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.loader_batch)
    units = layer_units(model, LAYER)
    cmodel, point = captum_model(model, LAYER)
    zero = lambda first, size, device: 0.0  # noqa: E731  (Captum's layer_baselines: zero)
    # warm-up, untimed: a whole sweep of ours (the process's memory grows to the sweep's size once,
    # for the three sides alike: timed first, the first side paid that growth), Captum on two images
    knockout.ablate(model, loader, layers=[LAYER], budget_mb=args.budget_mb, device=device)
    captum_sweep(cmodel, point, units, images[:2], labels[:2], 2, device, zero, warmup=True)

    wait_for_idle(args.wait_idle)
    with Timed(device) as t_captum:
        lost = torch.zeros(units, dtype=torch.long)
        for x, y in loader:  # Captum on the same loader, batch by batch
            lost += captum_sweep(cmodel, point, units, x, y, len(x), device, zero)
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_api:
        result = knockout.ablate(model, loader, layers=[LAYER], budget_mb=args.budget_mb, device=device)
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_engine:
        study = study_type("filter_ablation")
        spec = study.Spec.from_dict(resolve("filter_ablation", _entry()))
        context = Context(trained=model)
        conditions = filter_ablation.conditions(spec, context)
        engine = evaluate_conditions(
            conditions, context, images, labels, budget_mb=args.budget_mb, device=device, apply=apply_condition
        )
    rows = result.per_seed.set_index("condition")
    n = len(images)
    ours = torch.tensor([round(rows.loc[f"each:{LAYER}:{u}", "accuracy"] * n) for u in range(units)])
    engine_counts = torch.tensor([int((engine[f"each:{LAYER}:{u}"].predictions == labels).sum()) for u in range(units)])
    captum_counts = intact_correct(model, images, labels, n, device) - lost
    agree = bool((ours - captum_counts).abs().max() <= 1) and torch.equal(ours, engine_counts)
    return _row("sweep", n, t_captum, t_api, t_engine, agree, f"units {units}")


def _entry() -> dict:
    return {"type": "filter_ablation", "model": "m", "layers": [LAYER], "sets": {"each": {"select": "each"}}}


def occlusion_row(model, images, labels, args, device) -> dict:
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.loader_batch)
    knockout.occlude(model, images[:1], labels[:1], windows=[3], fill=0.0)  # warm-up, untimed
    captum_attribution(model, images[:1], labels[:1], [3], 1, 0.0, 64)
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_captum:
        theirs = np.concatenate(
            [captum_attribution(model, x, y, args.windows, 1, 0.0, 64) for x, y in loader]
        )  # Captum on the same loader, batch by batch
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_api:
        result = knockout.occlude(
            model, loader, windows=args.windows, fill=0.0, budget_mb=args.budget_mb, device=device
        )
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_engine:
        engine = occlusion_maps(
            model, images, labels, args.windows, stride=1, fill=0.0, budget_mb=args.budget_mb, device=device
        )
    ours = result.arrays[0]["attribution"]
    agree = bool(np.abs(ours - theirs).max() <= 1e-4) and np.array_equal(ours, engine["attribution"])
    return _row(
        "occlusion", len(images), t_captum, t_api, t_engine, agree, f"max |diff| {np.abs(ours - theirs).max():.1e}"
    )


def _row(question: str, n: int, t_captum, t_api, t_engine, agree: bool, detail: str) -> dict:
    ratio, kept = t_captum.seconds / t_api.seconds, t_engine.seconds / t_api.seconds
    return {
        "model": "resnet18",
        "question": question,
        "images": n,
        "captum_s": round(t_captum.seconds, 2),
        "api_s": round(t_api.seconds, 2),
        "engine_s": round(t_engine.seconds, 2),
        "ratio": round(ratio, 2),
        "api_vs_engine": round(kept, 2),
        "goal_met": "yes" if kept >= GOAL else "no",
        "agreement": ("ok" if agree else "FAILED") + f" ({detail})",
        "other_cpu": "/".join("n/a" if t.load is None else f"{t.load:.2f}" for t in (t_captum, t_api, t_engine)),
        "_ok": agree,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
    import captum

    print(environment(device, captum))
    notes: list[str] = []
    model, images, labels = resnet_setup(max(args.images, args.occlusion_images), args.seed, notes)
    model = model.to(device).eval()
    for note in notes:
        print(note)
    rows = [
        sweep_row(model, images[: args.images], labels[: args.images], args, device),
        occlusion_row(model, images[: args.occlusion_images], labels[: args.occlusion_images], args, device),
    ]
    for row in rows:
        print(
            f"  {row['question']}: captum {row['captum_s']} s, api {row['api_s']} s, engine {row['engine_s']} s",
            file=sys.stderr,
        )
    finish(
        rows,
        COLUMNS,
        ratio="ratio",
        out=args.out,
        left=(0, 1),
        notes=[
            f"ratio: captum_s / api_s; api_vs_engine: engine_s / api_s, the engine's speed the API keeps on a "
            f"DataLoader of {args.loader_batch} (goal >= {GOAL:g}: within 10% of the pipeline bench's row)",
            "other_cpu: cores other processes used while captum / api / engine ran (0.00 = idle machine)",
        ],
    )
    return 0 if all(r["_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
