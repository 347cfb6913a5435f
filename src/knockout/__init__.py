"""knockout: ablation and intervention studies on neural networks."""

from .models import build_model, load_model, save_model

__all__ = ["build_model", "load_model", "save_model"]
__version__ = "0.1.0"
