"""Activation functions by the names a config gives them (an arch's `activation`, factorize's
`between`), Keras' `exponential` included."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "exponential": None,  # Keras' `exponential` activation (study 4): no torch module, see Exp
    "identity": nn.Identity,
}


class Exp(nn.Module):
    """x -> exp(x), Keras' `exponential` activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def activation(name: str) -> nn.Module:
    """A new module of the activation `name` (a key of ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return Exp() if name == "exponential" else ACTIVATIONS[name]()
