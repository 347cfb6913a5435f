"""Single-unit ablation sweep: knockout's `each` conditions vs. Captum's LayerFeatureAblation.

What it measures
----------------
For every filter (output channel) of one conv layer, the accuracy of the network with that one
filter silenced, on the same model and images, computed two ways in one run, under each ablation
value of ``--values`` (one row per layer and value): ``zero`` (its output zeroed), ``mean`` (its
output replaced by its per-channel mean over reference images: ``reference_images`` in
_common.py, never the evaluated ones; computed once per model as the ``unit_values`` rule does,
outside the timing, and given to both sides) and ``resample`` (its output replaced by its output
on another image, each evaluated image's donor drawn from the reference images by
``knockout.engine.values.donor_indices``; Captum gets those very donors' activations as its
per-example ``layer_baselines``, computed inside its timing by a forward of the donor images with
a hook on the silence point, as a researcher would):

  * ours: ``knockout.studies.filter_ablation.conditions`` of the study entry
    ``{type: filter_ablation, layers: [LAYER], sets: {each: {select: each}}}`` (resolved against
    the schema by ``knockout.config.resolve`` once, before the timing; the baseline condition
    plus one ``each:LAYER:UNIT`` condition per filter) evaluated by
    ``knockout.engine.evaluate.evaluate_conditions``: the intact activations computed once; per
    unit, the change followed along the traced graph (``Graph.spread``: zero in the unit's
    channel, carried through the per-channel operations after it, a residual add and ReLU
    included, on that channel alone), each linear operation it reaches as its intact output plus
    its response to the unit (one input channel's work), and only what depends on those run
    again, for several units at once (stacked along the batch, channels-last memory). The timed
    region covers building the spec and the conditions and evaluating all of them, *including*
    the baseline (intact) condition.
  * Captum: ``captum.attr.LayerFeatureAblation(forward_func, module).attribute(x,
    additional_forward_args=(y,), layer_mask=M, layer_baselines=B, perturbations_per_eval=1)``
    (B: 0, the means, or the donors' activations: ``captum_baselines`` in _common.py)
    per batch of ``--captum-batch`` images, where ``module`` is the module whose output must be
    zero for the filter to be silent (``knockout.studies.silence_point``: the conv itself in the
    study-5 CNN, the batch norm after it in a ResNet), ``M = arange(C).view(1, C, 1, 1)`` makes
    each channel one feature group, and ``forward_func(x, y) = (model(x).argmax(1) == y).float()``
    returns per-example correctness. Captum's attribution is then ``correct(intact) -
    correct(unit silenced)`` per example and channel, so a unit's accuracy is the intact accuracy
    minus the mean attribution of its channel. That is one full forward of the whole network per
    unit and batch (plus Captum's two forwards per batch for the layer's output and the intact
    output, which are inside the timed region). The intact correctness used to turn differences
    back into accuracies is computed once, outside the timing. Captum runs on a copy of the model
    in which the silence point's output is passed on as a copy (``captum_model``): torchvision's
    BasicBlock adds the identity into its batch norm's output in place, and LayerFeatureAblation
    feeds that very tensor through its intact forward, so without the copy Captum silently
    reports wrong accuracies for every unit of a ResNet block (the check below catches it).

Both sides run with the same ``torch.set_num_threads`` (``--threads``) on the same device
(``--device``, default cpu) and are warmed up by a tiny untimed call first. The check: the
per-unit accuracies of the two agree (their correct-example counts are compared; batched vs.
unbatched convolutions may round differently and flip an example now and then, so a difference
of one example is tolerated). The exit status is 1 when more than 1% of a
layer's units differ by more than one example, or the intact accuracies differ.

Models, weights and images
--------------------------
  * cnn: study 5's CNN (``build_model('study5_cnn', (1, 28, 28), 10)``): the trained weights of
    ``results/models/cnn/seed0/final.pt`` when that file exists, else a seeded random init; the
    first ``--cnn-images`` Fashion-MNIST test images and their labels from
    ``results/data/fashion_mnist`` when prepared, else seeded random N(0, 1) tensors labelled with
    the intact model's predictions. Layers: conv1, conv2, conv3 (``--cnn-layers``; one row each).
  * resnet18: ``build_model({type: resnet, depth: 18, small_input: True}, (3, 32, 32), 10)`` with a
    seeded random init, on seeded random N(0, 1) 3x32x32 tensors (no CIFAR-10 here). A random
    ResNet predicts one class for every input, so per-unit accuracies would all equal the intact
    one and the agreement check would be vacuous; hence the batch norms' running statistics are
    set from one train-mode pass over the benchmark images and the classifier's bias is shifted
    so the mean logit over them is 0 (predictions then spread over the classes). Labels are the
    intact model's predictions (intact accuracy 100%; a unit's accuracy is how often the
    prediction survives its removal). Layers: layer2.1.conv2, layer3.1.conv2 and layer4.1.conv2
    (``--resnet-layers``), so the rows show how the speed-up depends on how much of the network
    follows the layer. Few images by default (``--resnet-images`` 32): Captum's side is a full
    ResNet18 forward per unit, 900 of them.

Output: a table with model, layer, value, units, images, captum_s, ours_s, speedup (captum_s / ours_s),
the row's arithmetic bound (the multiply-adds of a full forward divided by those a silenced unit
cannot avoid, ``engine.shared.unit_bound``), its goal (>= 3x, or >= 10x where the bound is >= 12x) and
whether it is met, the largest per-unit accuracy difference, the number of units
whose accuracy differs, how many units change the accuracy at all and the lowest per-unit
accuracy (to show the check is not vacuous), and the CPU other processes used while each side
ran; then the agreement and, as the last line, ``min ratio: N.NNx`` (the smallest speedup over
the rows). ``--out FILE.csv`` also writes the rows as CSV.
Times are those of whatever machine runs this, and only meaningful when ``other_cpu`` is near 0
for both sides; on a shared machine use ``--wait-idle 120`` (wait for a quiet moment before each
timed side).

How to run (from the repository root)
-------------------------------------
    .venv/bin/python bench/ablation_sweep.py                 # the full run (minutes on 2 cores)
    .venv/bin/python bench/ablation_sweep.py --quick         # 256 CNN images, 8 ResNet images
    .venv/bin/python bench/ablation_sweep.py --wait-idle 120 # on a shared machine
    .venv/bin/python bench/ablation_sweep.py --models resnet18 --resnet-layers layer2.1.conv2,layer3.1.conv2 \
        --resnet-images 32 --threads 2 --out bench/results/ablation_sweep.csv
"""

from __future__ import annotations

import argparse
import sys

from _common import (
    Timed,
    captum_baselines,
    cnn_setup,
    environment,
    finish,
    options,
    reference_images,
    resnet_setup,
    start,
    value_context,
    wait_for_idle,
)  # first: src/ on the path
import torch
from torch import nn

from knockout.config import resolve
from knockout.engine.evaluate import evaluate_conditions
from knockout.engine.shared import unit_bound
from knockout.graph import graph_of
from knockout.engine import Value, apply_condition, layer_units, silence_point
from knockout.studies import filter_ablation

GOAL = 3.0  # every row; and HIGH_GOAL where the arithmetic bound allows HIGH_BOUND or more
HIGH_GOAL, HIGH_BOUND = 10.0, 12.0

COLUMNS = [
    "model",
    "layer",
    "value",
    "units",
    "images",
    "captum_s",
    "ours_s",
    "speedup",
    "bound",
    "goal",
    "goal_met",
    "max_abs_diff",
    "units_differ",
    "units_changed",
    "acc_min",
    "acc_intact",
    "other_cpu",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[options(quick="fewer images (256 CNN, 8 ResNet) unless given")],
    )
    p.add_argument("--models", default="cnn,resnet18", help="comma list of: cnn, resnet18 (default both)")
    p.add_argument("--cnn-layers", default="conv1,conv2,conv3")
    p.add_argument("--resnet-layers", default="layer2.1.conv2,layer3.1.conv2,layer4.1.conv2")
    p.add_argument("--images", type=int, default=None, help="images for every model (overrides the two below)")
    p.add_argument("--cnn-images", type=int, default=1000, help="default 1000 (--quick: 256)")
    p.add_argument("--resnet-images", type=int, default=32, help="default 32 (--quick: 8)")
    p.add_argument("--values", default="zero,mean,resample", help="ablation values, comma list (default all three)")
    p.add_argument("--reference-images", type=int, default=1000, help="images the values come from (default 1000)")
    p.add_argument("--captum-batch", type=int, default=256, help="images per Captum attribute() call (default 256)")
    p.add_argument("--budget-mb", type=float, default=512, help="evaluate_conditions' budget_mb (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random weights and images (default 0)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - {"cnn", "resnet18"}
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from cnn, resnet18")
    args.values = [v.strip() for v in args.values.split(",") if v.strip()]
    if set(args.values) - {"zero", "mean", "resample"}:
        p.error(
            f"unknown value(s) {sorted(set(args.values) - {'zero', 'mean', 'resample'})}; choose from zero, mean, resample"
        )
    explicit = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        if "--cnn-images" not in explicit:
            args.cnn_images = 256
        if "--resnet-images" not in explicit:
            args.resnet_images = 8
    if args.images is not None:
        args.cnn_images = args.resnet_images = args.images
    return args


# --------------------------------------------------------------------------- the two ways


def each_entry(layer: str, value: str = "zero") -> dict:
    """The study entry {layers: [layer], sets: {each: {select: each, value: value}}}, checked
    against the schema and with its defaults filled (once, outside the timing, as the pipeline
    does)."""
    each = {"select": "each", "value": value}
    return resolve(
        "filter_ablation", {"type": "filter_ablation", "model": "m", "layers": [layer], "sets": {"each": each}}
    )


def unit_name(layer: str, value: str, unit: int) -> str:
    """The name of the condition silencing `unit` under `value` (`each:conv2:3`, `each@mean:conv2:3`)."""
    return f"each{'' if value == 'zero' else '@' + Value(value).label}:{layer}:{unit}"


def ours(model: nn.Module, entry: dict, layer: str, images, labels, budget_mb: float, device, context, warmup=False):
    """Per-unit correct counts (units,) and the intact count, via evaluate_conditions on the
    conditions of the study `entry` (each_entry(layer, value)) in `context` (value_context)
    (warmup: only the baseline and two units, result not used)."""
    spec = filter_ablation.Spec.from_dict(entry)
    conds = filter_ablation.conditions(spec, context)
    if warmup:
        evaluate_conditions(
            conds[:3], context, images, labels, budget_mb=budget_mb, device=device, apply=apply_condition
        )
        return None
    out = evaluate_conditions(conds, context, images, labels, budget_mb=budget_mb, device=device, apply=apply_condition)
    labels = labels.cpu()
    value = entry["sets"]["each"]["value"]
    value = value if isinstance(value, str) else value["kind"]
    counts = torch.tensor(
        [int((out[unit_name(layer, value, u)].predictions == labels).sum()) for u in range(layer_units(model, layer))]
    )
    return counts, int((out["baseline"].predictions == labels).sum())


class _Copy(nn.Module):
    """Passes its input on as a copy, so in-place ops further on can't write into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def captum_model(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """A copy of `model` for Captum, and the module in it whose output silences `layer`'s units.

    torchvision's BasicBlock writes into its batch norms' outputs in place (`out += identity`,
    ReLU(inplace=True)). LayerFeatureAblation feeds the layer's saved output back through the
    model for its intact forward, so without a copy that tensor comes back as
    relu(bn2 + identity) and every ablated forward adds the identity a second time: wrong
    accuracies for every unit. Hence the silence point is wrapped as Sequential(point, _Copy())
    (one extra copy of one activation per forward, negligible next to the convolutions).
    """
    import copy

    model = copy.deepcopy(model).eval()
    name = silence_point(model, layer)
    head, _, leaf = name.rpartition(".")
    parent = model.get_submodule(head) if head else model
    point = getattr(parent, leaf)
    setattr(parent, leaf, nn.Sequential(point, _Copy()))
    return model, point


def captum(model: nn.Module, point: nn.Module, units: int, images, labels, batch: int, device, baselines, warmup=False):
    """Per-unit lost counts (units,): examples correct intact and wrong with the unit silenced,
    minus the reverse, via LayerFeatureAblation on `point` (see captum_model), one full forward
    per unit, the silenced unit set to `baselines(first, size, device)` (captum_baselines)
    (warmup: two groups, result not used)."""
    from captum.attr import LayerFeatureAblation

    ablator = LayerFeatureAblation(lambda x, y: (model(x).argmax(1) == y).float(), point)
    mask = torch.arange(units, device=device).view(1, units, 1, 1)
    if warmup:
        mask = mask % 2
    lost = torch.zeros(units, dtype=torch.long)
    with torch.no_grad():
        for first in range(0, len(images), batch):
            x = images[first : first + batch].to(device)
            y = labels[first : first + batch].to(device)
            attr = ablator.attribute(
                x,
                additional_forward_args=(y,),
                layer_mask=mask,
                layer_baselines=baselines(first, len(x), device),
                perturbations_per_eval=1,
            )
            if warmup:
                return None
            # attr (B, C, H, W): intact - ablated correctness, the same over a channel's H, W
            lost += attr[:, :, 0, 0].round().long().sum(0).cpu()
    return lost


def intact_correct(model: nn.Module, images, labels, batch: int, device) -> int:
    with torch.no_grad():
        return sum(
            int((model(images[s : s + batch].to(device)).argmax(1) == labels[s : s + batch].to(device)).sum())
            for s in range(0, len(images), batch)
        )


def run_row(name: str, model: nn.Module, layer: str, value: str, images, labels, reference, args, device) -> dict:
    units = layer_units(model, layer)
    n = len(images)
    context = value_context(model, value, [layer], reference.to(device))
    # warm-up: a tiny call of each (allocator, kernels, thread pool), untimed
    entry = each_entry(layer, value)
    ours(model, entry, layer, images[:2], labels[:2], args.budget_mb, device, context, warmup=True)
    cmodel, point = captum_model(model, layer)
    baselines = captum_baselines(cmodel, point, layer, context, value, n)
    captum(cmodel, point, units, images[:2], labels[:2], 2, device, baselines, warmup=True)

    wait_for_idle(args.wait_idle)
    with Timed(device) as t_c:
        lost = captum(cmodel, point, units, images, labels, args.captum_batch, device, baselines)
    wait_for_idle(args.wait_idle)
    with Timed(device) as t_o:
        ours_counts, ours_intact = ours(model, entry, layer, images, labels, args.budget_mb, device, context)
    captum_s, ours_s = t_c.seconds, t_o.seconds

    intact = intact_correct(model, images, labels, args.captum_batch, device)
    captum_counts = intact - lost
    diff = (ours_counts - captum_counts).abs()
    bad = int((diff > 1).sum())
    ok = ours_intact == intact and bad <= 0.01 * units
    full, unavoidable = unit_bound(graph_of(model, images[:1].to(device)), layer)
    bound = full / max(1, unavoidable)
    goal = HIGH_GOAL if bound >= HIGH_BOUND else GOAL
    return {
        "model": name,
        "layer": layer,
        "value": value,
        "units": units,
        "images": n,
        "captum_s": round(captum_s, 3),
        "ours_s": round(ours_s, 3),
        "speedup": round(captum_s / ours_s, 2),
        "bound": round(bound, 1) if bound < 1e4 else f"{bound:.1e}",
        "goal": f">={goal:g}x",
        "goal_met": "yes" if captum_s / ours_s >= goal else "no",
        "max_abs_diff": round(int(diff.max()) / n, 6),
        "units_differ": int((diff > 0).sum()),
        "units_changed": int((ours_counts != ours_intact).sum()),
        "acc_min": round(int(ours_counts.min()) / n, 4),
        "acc_intact": round(ours_intact / n, 4),
        "other_cpu": "/".join("n/a" if t.load is None else f"{t.load:.2f}" for t in (t_c, t_o)),
        "_busy": any(t.load is not None and t.load > 0.2 for t in (t_c, t_o)),
        "_ok": ok,
        "_why": (
            ""
            if ok
            else (
                f"intact counts differ (ours {ours_intact}, captum {intact})"
                if ours_intact != intact
                else f"{bad} of {units} units differ by more than one example"
            )
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start(args)
    import captum as captum_pkg

    print(environment(device, captum_pkg))
    print(
        f"ours: evaluate_conditions(budget_mb={args.budget_mb:g}) over all images, baseline condition "
        f"included; captum: LayerFeatureAblation, perturbations_per_eval=1, batches of {args.captum_batch}"
    )
    notes: list[str] = []
    setups = []
    reference = {}
    if "cnn" in args.models:
        setups.append(("cnn", *cnn_setup(args.cnn_images, args.seed, notes), args.cnn_layers))
    if "resnet18" in args.models:
        setups.append(("resnet18", *resnet_setup(args.resnet_images, args.seed, notes), args.resnet_layers))
    if set(args.values) - {"zero"}:
        for name, *_ in setups:
            reference[name] = reference_images(name, args.reference_images, args.seed, notes)
    for note in notes:
        print(note)
    print(flush=True)

    rows = []
    for name, model, images, labels, layers in setups:
        model = model.to(device).eval()
        for layer in [s.strip() for s in layers.split(",") if s.strip()]:
            for value in args.values:
                row = run_row(name, model, layer, value, images, labels, reference.get(name), args, device)
                rows.append(row)
                print(
                    f"  {name} {layer} {value}: captum {row['captum_s']:.2f} s, ours {row['ours_s']:.2f} s "
                    f"({row['speedup']:.1f}x)",
                    file=sys.stderr,
                    flush=True,
                )

    failed = [r for r in rows if not r["_ok"]]
    for r in failed:
        print(f"MISMATCH {r['model']} {r['layer']} {r['value']}: {r['_why']}", file=sys.stderr, flush=True)
    busy = [r for r in rows if r["_busy"]]
    finish(
        rows,
        COLUMNS,
        ratio="speedup",
        out=args.out,
        left=(0, 1, 2),
        notes=[
            f"goal: speedup (captum_s / ours_s) >= {GOAL:g}x on every row, >= {HIGH_GOAL:g}x where the bound is "
            f">= {HIGH_BOUND:g}x; met in {sum(r['goal_met'] == 'yes' for r in rows)} of {len(rows)} rows",
            "bound: the multiply-adds of a full forward / those a silenced-unit condition cannot avoid (one input "
            "channel's share of each linear operation the change reaches, all that depends on those: "
            "knockout.engine.shared.unit_bound); Captum runs the full forward per unit",
            "max_abs_diff: largest |acc_ours - acc_captum| over the layer's units; units_differ: units whose "
            "accuracies differ at all; units_changed: units whose removal changes the accuracy (ours)",
            "other_cpu: cores other processes used while captum / ours ran (0.00 = idle machine)",
            *(
                [
                    f"warning: other processes used > 0.2 cores during {len(busy)} row(s): those times are "
                    "noisy (--wait-idle 120 waits for quiet moments)"
                ]
                if busy
                else []
            ),
            "agreement: " + ("FAILED" if failed else "ok (every row within one example per unit)"),
        ],
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
