"""A Morcos-style study, timed: knockout vs. the Captum loop a researcher would write.

What it measures
----------------
Study 5's CNN (``study5_cnn``: conv 32/64/64, dense 64, 10 classes; 234 units), trained on
Fashion-MNIST, evaluated on the full 10,000-image test set under:

  * every unit of every conv and linear layer silenced alone (234 conditions), and
  * cumulative ablation curves (Morcos et al. 2018): per layer, a growing fraction of its units
    (``--fractions``, default 0.1, 0.25, 0.5, 0.75, 0.9) silenced in random order, ``--draws``
    orders (default 3): 5 layers x 5 fractions x 3 draws = 75 conditions,

computed two ways in one run, on the same model and images, with the same
``torch.set_num_threads`` (``--threads``), under each ablation value of ``--values`` (one row
each): ``zero``, ``mean`` (a unit's output replaced by its per-channel mean over 2,000 training
images, computed once as the ``unit_values`` rule does, outside the timing, and given to both
sides) and ``resample`` (replaced by its output on a donor training image, each test image's
donor drawn by ``knockout.engine.values.donor_indices``; the peer computes those donors'
activations itself, inside its timing: ``captum_baselines`` in _common.py):

  * ours: the conditions of one ``filter_ablation`` study (sets ``each: {select: each}`` and
    ``curve: {select: cumulative, order: random, ...}`` over all five layers), built by
    ``filter_ablation.conditions`` and evaluated by one ``evaluate_conditions`` call (as the
    pipeline's `intervene` job does, timed from building the conditions to the last prediction);
  * peer: for the single units, ``captum.attr.LayerFeatureAblation`` on each layer's output with
    one feature per unit and the value as its ``layer_baselines`` (one forward of the whole
    network per unit and batch, as in bench/ablation_sweep.py); for the curves, which Captum has
    no verb for, the loop a researcher writes: a forward hook replacing the chosen units of the
    layer's output by the value, one pass over the test set per condition. Both sides use the same units (the curves' random orders are
    knockout's).

The check: every condition's accuracy agrees (its correct-example count; batched and unbatched
convolutions round differently, so a tie may flip one example: differences of one are counted
and reported, more fail the run). Output, per value: the two times, their ratio (goal >= 10x on zero; >= 3x on mean and resample,
the issue's floor for every row), the units and
conditions, how many accuracies differ, how many units change the accuracy at all (the check is
not vacuous); ``--out FILE.csv`` writes the row; the last line is ``min ratio: N.NNx``.

The model: the trained weights of ``--weights`` (a knockout checkpoint) when given, else study 5's
CNN trained here once for ``--epochs`` (default 2) on ``--train-subset`` (default 20,000) training
images and kept in ``results/bench/`` for the next run. The data: Debian's or any mirror's
Fashion-MNIST, verified and prepared by knockout.data into ``results/bench/`` (full test set).

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/morcos_study.py                # ~40 minutes on 2 cores (3 values), most of it Captum
    .venv/bin/python bench/morcos_study.py --quick        # 2,000 test images
    .venv/bin/python bench/morcos_study.py --threads 2 --out bench/results/morcos_study.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import (
    ROOT,
    Timed,
    captum_baselines,
    environment,
    finish,
    options,
    start,
    value_context,
    wait_for_idle,
)  # first: src/ on the path
import captum
import torch
from torch import nn

from knockout.config import resolve
from knockout.data import fetch, open_view, prepare
from knockout.engine.evaluate import evaluate_conditions
from knockout.models import build_model, load_model
from knockout.engine import Value, apply_condition, layer_units, silence_point
from knockout.studies import filter_ablation
from knockout.trainer import TrainConfig, train

GOAL = {"zero": 10.0, "mean": 3.0, "resample": 3.0}
REFERENCE_IMAGES = 2000  # training images the mean and the resample donors come from
LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
WORK = ROOT / "results" / "bench"
COLUMNS = [
    "model",
    "value",
    "images",
    "units",
    "conditions",
    "captum_s",
    "ours_s",
    "ratio",
    "goal_met",
    "differ_by_one",
    "differ_more",
    "units_changed",
    "other_cpu",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options(quick="2,000 test images instead of 10,000")],
    )
    p.add_argument("--images", type=int, default=None, help="test images (default all 10,000; --quick: 2,000)")
    p.add_argument("--fractions", default="0.1,0.25,0.5,0.75,0.9")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument(
        "--weights", type=Path, help="a trained study5_cnn checkpoint (default: train one, kept in results/bench)"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=20_000)
    p.add_argument("--mirror", action="append", default=["~/.cache/knockout/datasets", "/usr/share/datasets"])
    p.add_argument("--values", default="zero,mean,resample", help="ablation values, comma list (default all three)")
    p.add_argument("--captum-batch", type=int, default=1000)
    p.add_argument("--budget-mb", type=float, default=512)
    args = p.parse_args(argv)
    args.fractions = [float(f) for f in args.fractions.split(",")]
    args.values = [v.strip() for v in args.values.split(",") if v.strip()]
    if set(args.values) - set(GOAL):
        p.error(f"unknown value(s) {sorted(set(args.values) - set(GOAL))}; choose from {', '.join(GOAL)}")
    if args.images is None:
        args.images = 2000 if args.quick else None
    return args


def data(args) -> tuple:
    """The prepared Fashion-MNIST (a training subset, the whole test set), kept in results/bench."""
    raw, prepared = WORK / "raw" / "fashion_mnist", WORK / f"fashion_mnist_{args.train_subset}"
    if not (prepared / "meta.json").exists():
        fetch("fashion_mnist", raw, args.mirror, download=True)
        prepare("fashion_mnist", raw, prepared, train_subset=args.train_subset, test_subset=None, seed=0)
    return open_view(prepared)


def trained(args, train_split, test_split, device, notes: list[str]) -> nn.Module:
    if args.weights:
        notes.append(f"model: {args.weights}")
        return load_model(args.weights, device).eval()
    path = WORK / f"morcos_cnn_{args.train_subset}_{args.epochs}ep.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = build_model("study5_cnn", (1, 28, 28), 10)
        settings = resolve(
            "train",
            {
                "epochs": args.epochs,
                "batch_size": 128,
                "optimizer": "adam",
                "lr": 0.003,
                "schedule": "onecycle",
                "augment": False,
            },
        )
        out = WORK / "morcos_training"
        train(
            model, train_split, test_split, TrainConfig.from_dict(settings), out, seed=0, device=device, progress=False
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        (out / "final.pt").replace(path)
    notes.append(f"model: study5_cnn trained here ({path.relative_to(ROOT)})")
    return load_model(path, device).eval()


def study(args, value: str = "zero") -> dict:
    sets = {
        "each": {"select": "each", "value": value},
        "curve": {
            "select": "cumulative",
            "order": "random",
            "repeats": args.draws,
            "fractions": args.fractions,
            "value": value,
        },
    }
    return resolve("filter_ablation", {"type": "filter_ablation", "model": "cnn", "layers": LAYERS, "sets": sets})


def ours(model, entry, images, labels, args, device, context) -> dict[str, int]:
    """Correct counts per condition, from one evaluate_conditions call (as the intervene job)."""
    conditions = filter_ablation.conditions(filter_ablation.Spec.from_dict(entry), context)
    out = evaluate_conditions(
        conditions, context, images, labels, budget_mb=args.budget_mb, device=device, apply=apply_condition
    )
    labels = labels.cpu()
    return {name: int((o.predictions == labels).sum()) for name, o in out.items()}


def peer(model, conditions, images, labels, args, device, context, value: str) -> dict[str, int]:
    """Correct counts per condition: Captum's LayerFeatureAblation for the single units (one
    forward per unit), the value as its baselines; a hook replacing the units by the value and one
    pass per condition for the curves."""
    from captum.attr import LayerFeatureAblation

    counts = {}
    with torch.no_grad():
        intact = int(
            sum(
                (model(images[s : s + args.captum_batch]).argmax(1) == labels[s : s + args.captum_batch]).sum()
                for s in range(0, len(images), args.captum_batch)
            )
        )
    counts["baseline"] = intact
    each = "each" if value == "zero" else f"each@{Value(value).label}"
    for layer in LAYERS:
        units = layer_units(model, layer)
        point = model.get_submodule(silence_point(model, layer))
        baselines = captum_baselines(model, point, layer, context, value, len(images))
        ablator = LayerFeatureAblation(lambda x, y: (model(x).argmax(1) == y).float(), point)
        lost = torch.zeros(units, dtype=torch.long)
        shape = (1, units, 1, 1) if isinstance(model.get_submodule(layer), nn.Conv2d) else (1, units)
        mask = torch.arange(units, device=device).view(shape)
        with torch.no_grad():
            for s in range(0, len(images), args.captum_batch):
                x, y = images[s : s + args.captum_batch], labels[s : s + args.captum_batch]
                attribution = ablator.attribute(
                    x,
                    additional_forward_args=(y,),
                    layer_mask=mask,
                    layer_baselines=baselines(s, len(x), device),
                    perturbations_per_eval=1,
                )
                lost += (
                    attribution.flatten(2).mean(2).sum(0).round().long().cpu()
                    if attribution.dim() > 2
                    else attribution.sum(0).round().long().cpu()
                )
        for u in range(units):
            counts[f"{each}:{layer}:{u}"] = intact - int(lost[u])
    for c in conditions:  # the curves: what a researcher writes without Captum
        if not c.set.startswith("curve"):
            continue
        ((layer, chosen),) = c.silence
        index = torch.as_tensor(chosen, device=device)
        point = model.get_submodule(silence_point(model, layer))
        baselines = captum_baselines(model, point, layer, context, value, len(images))
        correct = 0
        for s in range(0, len(images), args.captum_batch):
            x, y = images[s : s + args.captum_batch], labels[s : s + args.captum_batch]
            new = baselines(s, len(x), device)  # before the hook: the donors' forward must be intact

            def replace(module, args_, output, index=index, new=new):
                output = output.clone()
                if isinstance(new, torch.Tensor):
                    output[:, index] = new.expand_as(output)[:, index]
                else:
                    output.index_fill_(1, index, 0.0)
                return output

            handle = point.register_forward_hook(replace)
            with torch.no_grad():
                correct += int((model(x).argmax(1) == y).sum())
            handle.remove()
        counts[c.name] = correct
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
    print(environment(device, captum), flush=True)
    notes: list[str] = []
    train_split, test_split, _ = data(args)
    model = trained(args, train_split, test_split, device, notes)
    n = args.images or len(test_split)
    images, labels = test_split.inputs(range(n), device), test_split.labels[:n].to(device)
    reference = train_split.inputs(range(min(REFERENCE_IMAGES, len(train_split))), device)
    notes.append(f"mean and resample values from the first {len(reference)} training images")
    rows, failed = [], 0
    for value in args.values:
        entry = study(args, value)
        context = value_context(model, value, LAYERS, reference)
        conditions = filter_ablation.conditions(filter_ablation.Spec.from_dict(entry), context)
        warm = {**entry, "sets": {"each": {**entry["sets"]["each"], "layers": ["conv3"]}}}
        ours(model, resolve("filter_ablation", warm), images[:64], labels[:64], args, device, context)  # warm-up
        wait_for_idle(args.wait_idle)
        with Timed(device) as ours_time:
            mine = ours(model, entry, images, labels, args, device, context)
        wait_for_idle(args.wait_idle)
        with Timed(device) as peer_time:
            theirs = peer(model, conditions, images, labels, args, device, context, value)
        differ = {name: abs(mine[name] - theirs[name]) for name in theirs}
        by_one, more = sum(d == 1 for d in differ.values()), sum(d > 1 for d in differ.values())
        changed = sum(mine[c.name] != mine["baseline"] for c in conditions if c.set.startswith("each"))
        ratio = peer_time.seconds / ours_time.seconds
        rows.append(
            {
                "model": "study5_cnn",
                "value": value,
                "images": n,
                "units": sum(c.set.startswith("each") for c in conditions),
                "conditions": len(conditions),
                "captum_s": round(peer_time.seconds, 2),
                "ours_s": round(ours_time.seconds, 2),
                "ratio": round(ratio, 2),
                "goal_met": "yes" if ratio >= GOAL[value] else "no",
                "differ_by_one": by_one,
                "differ_more": more,
                "units_changed": changed,
                "other_cpu": f"{peer_time.load or 0:.2f}/{ours_time.load or 0:.2f}",
            }
        )
        print(f"  {value}: peer {peer_time.seconds:.1f} s, ours {ours_time.seconds:.1f} s", file=sys.stderr)
        if more:
            print(f"disagreement ({value}): {more} conditions differ by more than one example", file=sys.stderr)
        failed += more
        notes.append(
            f"{value}: accuracy intact {mine['baseline'] / n:.4f}; ours and the peer agree on every condition"
            + (f" but {by_one} (one example each: a tie)" if by_one else "")
        )
    notes.append("goal: >= 10x on zero, >= 3x on mean and resample")
    finish(rows, COLUMNS, ratio="ratio", out=args.out, notes=notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
