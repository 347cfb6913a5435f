"""How a network's output is read as one logit per class of its dataset (a model entry's `output`
and `class_outputs`).

Which part of the output holds the logits: a tensor is itself; a tuple's or list's first element
(auxiliary heads after it); a dict's `logits`; an object's `.logits` (Hugging Face's outputs); or
the key, attribute or index the model entry's `output` names.

Which outputs are the dataset's classes: by default the network has one output per class, in
the dataset's order; `class_outputs` (class k is output class_outputs[k]) maps a head of other
size (a 1000-way ImageNet head on a 10-class subset, study 2's 128 outputs for MNIST's 10). The
logits then come out class-first: column k is class k for k < K and the network's other outputs
follow in their order, so an argmax >= K is an output that is none of the dataset's classes (a
wrong answer) and the cross-entropy with the class labels is the network's own loss over all of
its outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Readout:
    """output: which part of a model's output holds the logits (None: found as above);
    class_outputs: the output of each class, in class order (None: output k is class k)."""

    output: str | int | None = None
    class_outputs: tuple[int, ...] | None = None

    @classmethod
    def of(cls, model) -> Readout:
        """The readout a knockout model carries in its spec (the model entry's), else the default."""
        return cls.from_record(getattr(model, "spec", {}).get("readout"))

    @classmethod
    def from_record(cls, record: dict | None) -> Readout:
        """From a spec's record, or a model entry of the config (its `output` and `class_outputs`)."""
        record = record or {}
        outputs = record.get("class_outputs")
        return cls(record.get("output"), tuple(int(o) for o in outputs) if outputs is not None else None)

    @property
    def record(self) -> dict | None:
        """As a model's spec stores it (None for the default)."""
        if self == Readout():
            return None
        return {"output": self.output, "class_outputs": list(self.class_outputs) if self.class_outputs else None}

    def logits(self, output) -> torch.Tensor:
        """The logits tensor (N, outputs) of a model's output, as the network gives them."""
        if self.output is not None:
            return _named(output, self.output)
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        if isinstance(output, Mapping):
            if isinstance(output.get("logits"), torch.Tensor):
                return output["logits"]
            keys = ", ".join(map(str, output))
            raise TypeError(f"the model returns a dict without 'logits' (keys: {keys}): name its logits with output")
        if isinstance(getattr(output, "logits", None), torch.Tensor):
            return output.logits
        raise TypeError(
            f"cannot find the logits in a model output of type {type(output).__name__}: name them with output"
        )

    def __call__(self, output) -> torch.Tensor:
        """The class-first logits (N, outputs) of a model's output: column k is class k."""
        logits = self.logits(output)
        if self.class_outputs is None:
            return logits
        return logits.index_select(-1, self.order(logits.shape[-1], logits.device))

    def order(self, outputs: int, device=None) -> torch.Tensor:
        """The network's outputs in class-first order: the classes', then the others."""
        chosen = list(self.class_outputs or ())
        rest = sorted(set(range(outputs)) - set(chosen))
        return torch.tensor(chosen + rest, dtype=torch.long, device=device)

    def check(self, outputs: int, num_classes: int) -> None:
        """ValueError, one line, unless a network of `outputs` outputs fits `num_classes` classes."""
        if self.class_outputs is None:
            if outputs != num_classes:
                raise ValueError(
                    f"the network gives {outputs} outputs for {num_classes} classes: give it a head of {num_classes} "
                    f"outputs, or list here the output of each class ({num_classes} of them)"
                )
            return
        chosen = self.class_outputs
        if len(chosen) != num_classes:
            raise ValueError(f"class_outputs lists {len(chosen)} outputs for {num_classes} classes")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"class_outputs names an output twice ({', '.join(map(str, chosen))})")
        if max(chosen) >= outputs or min(chosen) < 0:
            raise ValueError(
                f"class_outputs names output {max(chosen)}; the network gives {outputs} (0..{outputs - 1})"
            )


def _named(output, name: str | int) -> torch.Tensor:
    """The part of a model's output `name` names: a dict's key, an attribute, a tuple's index."""
    if isinstance(name, int) and isinstance(output, (tuple, list)):
        found = output[name] if -len(output) <= name < len(output) else None
    elif isinstance(output, Mapping):
        found = output.get(name)
    else:
        found = getattr(output, str(name), None)
    if not isinstance(found, torch.Tensor):
        have = ", ".join(map(str, output)) if isinstance(output, Mapping) else type(output).__name__
        raise TypeError(f"output {name!r}: not a tensor of the model's output ({have})")
    return found
