"""knockout: ablation and intervention studies on neural networks."""

__all__ = ["build_model", "load_model", "save_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `python -m knockout aggregate` runs in the analysis env, which has no torch.
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(name)
