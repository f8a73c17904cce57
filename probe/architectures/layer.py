"""One detected layer: its attention module and output projection (W_O), and W_O's weight and
bias read wherever they live (an accelerate offload map, a tensor-parallel shard).

One job: the :class:`AttentionLayer` record and building it from what detection found.
Imports torch and ``probe.errors`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class AttentionLayer:
    """One layer's attention module and its output projection."""

    index: int
    name: str
    module: nn.Module
    out_proj: nn.Module
    conv1d: bool
    #: qualified name of the output projection
    out_name: str = ""
    #: (module, name of W_O's parameter prefix relative to it) from out_proj up to the model;
    #: where an accelerate offload hook keeps the real weight
    out_chain: tuple = field(default=(), compare=False, repr=False)

    def _parameter(self, name: str) -> torch.Tensor | None:
        p = getattr(self.out_proj, name, None)
        if p is None:
            return None
        if p.device.type == "meta":
            p = _offloaded(self.out_chain, name, self.index)
        if hasattr(p, "to_local"):  # a DTensor under tensor parallelism (tp_plan)
            p = _rank_part(p, name, self.conv1d)
        return p

    def output_weight(self, device: torch.device | str | None = None) -> torch.Tensor:
        """W_O in nn.Linear layout ``[d_model, head * d_head]``, on ``device`` if given.

        Works on offloaded models: a weight on the meta device is read from accelerate's
        offload map (the weight the projection will actually use), never from the meta tensor.
        """
        w = self._parameter("weight")
        if device is not None:
            w = w.to(device)
        return w.t() if self.conv1d else w

    def output_bias(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        b = self._parameter("bias")
        return b if b is None or device is None else b.to(device)


def _rank_part(p, name: str, conv1d: bool) -> torch.Tensor:
    """This rank's part of a tensor-parallel W_O: the shard of its input axis, which holds the
    columns of the heads this rank computes (row-wise parallel output projection); anything
    else (a replicated weight, the bias) is gathered whole."""
    in_dim = 0 if conv1d else 1
    if name == "weight" and any(getattr(pl, "dim", None) == in_dim for pl in p.placements):
        return p.to_local()
    return p.full_tensor()


def _offloaded(chain, name: str, index: int) -> torch.Tensor:
    """A meta parameter's real value from the accelerate hook that will load it."""
    for module, prefix in chain:
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", (hook,)):
            weights = getattr(h, "weights_map", None)
            if weights is None:
                continue
            try:
                return weights[f"{prefix}{name}"]
            except KeyError:
                continue
    raise UnsupportedModelError(
        f"layer {index}: the output projection's {name} is on the meta device and no accelerate "
        "offload hook holds its value; load the model with real weights (or with device_map "
        "offloading, whose hooks probe reads)"
    )


def _chain(model: nn.Module, out_name: str) -> tuple:
    parts = out_name.split(".")
    chain = []
    for i in range(len(parts), -1, -1):
        path = ".".join(parts[:i])
        rest = ".".join(parts[i:])
        chain.append((model.get_submodule(path) if path else model, f"{rest}." if rest else ""))
    return tuple(chain)


def as_layers(model: nn.Module, found) -> list[AttentionLayer]:
    """An :class:`AttentionLayer` per ``(name, attention module, output projection name)`` of
    ``found``, numbered in that order."""
    layers = []
    for index, (name, module, out_name) in enumerate(found):
        out_proj = model.get_submodule(out_name)
        conv1d = type(out_proj).__name__ == "Conv1D"
        layers.append(AttentionLayer(index, name, module, out_proj, conv1d, out_name,
                                     _chain(model, out_name)))
    return layers
