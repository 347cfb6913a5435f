"""knockout: ablation and intervention studies on neural networks, as one reproducible workflow
(Snakemake, from a config) and from Python on the networks and data you hold:

    import knockout
    result = knockout.ablate(model, loader, layers=["layer3.1.conv2"], preprocess="imagenet")
    result.table, result.plot()

The verbs (`knockout.api`): ablate, swap_layers, occlude, top_activations, unit_statistics,
factorize, train; knockout's checkpoints: build_model, load_model, save_model.
"""

__version__ = "0.2.0"

# Where each public name lives; imported on first use, so `python -m knockout aggregate` runs in
# the analysis env (no torch) and `import knockout` is instant.
_HOMES = {
    "build_model": "models",
    "load_model": "models",
    "save_model": "models",
    "ablate": "api",
    "swap_layers": "api",
    "occlude": "api",
    "top_activations": "api",
    "unit_statistics": "api",
    "factorize": "api",
    "train": "api",
    "Result": "api",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'knockout' has no attribute {name!r}")
