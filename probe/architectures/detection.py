"""Finding the attention modules of a module tree, and their output projections.

transformers v5 hands every attention call to the function registered under the model's
attention implementation, together with the calling module. probe therefore needs, per layer,
only that module and its output projection (W_O); head counts, head size, grouped-query layout,
rotary embeddings, scaling, soft-capping and sinks reach the attention function as tensors or
keyword arguments. Detection finds them from the module tree:

- an *attention module* has query/key/value projections among its children (``q_proj k_proj
  v_proj``, ``query key value``, ``q_lin k_lin v_lin``, or one fused ``qkv_proj``, ``Wqkv``,
  ``c_attn``, ``query_key_value``) and its class calls ``ALL_ATTENTION_FUNCTIONS``;
- its *output projection* is the first child named ``o_proj out_proj Wo o c_proj out_lin
  dense``, else the parent's ``output.dense`` (the BERT layout); a GPT-2 ``Conv1D`` is
  recognised by type (its weight is ``[in, out]``, the transpose of ``nn.Linear``'s);
- a module whose model file's eager attention takes parameters or reads module attributes
  that probe's backend does not reproduce is refused, so captures never silently differ.

One job: :func:`find`, the search under one root, in module order, with errors that name the
part not found. Imports torch and the package's ``families`` (for error messages).
"""

from __future__ import annotations

import functools
import inspect
import re
import sys

from torch import nn

from ..errors import UnsupportedModelError
from .families import OUTSIDE_INTERFACE, supported_families

#: children that make a module an attention module: (query, key, value) names or a fused one
QKV_NAMES: tuple[tuple[str, str, str], ...] = (
    ("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q_lin", "k_lin", "v_lin"),
    ("query_proj", "key_proj", "value_proj"), ("q", "k", "v"),
)
FUSED_QKV_NAMES: tuple[str, ...] = ("qkv_proj", "Wqkv", "c_attn", "query_key_value", "qkv")
#: output projection: a child of the attention module, in this order of preference
OUT_NAMES: tuple[str, ...] = ("o_proj", "out_proj", "Wo", "o", "c_proj", "out_lin", "dense")
#: output projection relative to the attention module's parent (BERT: attention.output.dense)
PARENT_OUT_NAMES: tuple[str, ...] = ("output.dense",)

#: parameters of a model's eager attention function that probe's backend reproduces
_KNOWN_EAGER_PARAMS = frozenset({"module", "query", "key", "value", "attention_mask", "scaling",
                                 "dropout", "softcap", "sliding_window", "kwargs"})
#: attributes of the calling module that an eager function may read without changing the math
_KNOWN_MODULE_ATTRS = frozenset({"num_key_value_groups", "training", "sinks", "config",
                                 "head_dim", "is_causal", "scaling", "layer_idx"})


def _projections(module: nn.Module) -> str | None:
    children = module._modules
    for names in QKV_NAMES:
        if all(children.get(n) is not None for n in names):
            return "/".join(names)
    for fused in FUSED_QKV_NAMES:
        if children.get(fused) is not None:
            return fused
    return None


def _class_source(cls) -> str | None:
    """The source of ``cls`` and its bases up to ``nn.Module``; None when not readable."""
    parts = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        try:
            parts.append(inspect.getsource(klass))
        except (OSError, TypeError):
            return None
    return "\n".join(parts)


@functools.lru_cache(maxsize=None)
def _class_uses_interface(cls) -> bool:
    # cached per class: inspect.getsource parses the class's whole model file each call
    source = _class_source(cls)
    return source is None or "ALL_ATTENTION_FUNCTIONS" in source


def _uses_interface(module: nn.Module) -> bool:
    return _class_uses_interface(type(module))


def _eager_surprise(module: nn.Module, modelled: frozenset = frozenset()) -> str | None:
    """Why the model's own eager attention differs from probe's backend, if it visibly does
    (``modelled``: extra eager parameters the calling backend reproduces)."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return None if eager is None else _eager_function_surprise(eager, modelled)


@functools.lru_cache(maxsize=None)
def _eager_function_surprise(eager, modelled: frozenset) -> str | None:
    try:
        params = set(inspect.signature(eager).parameters)
        source = inspect.getsource(eager)
    except (OSError, TypeError, ValueError):
        return None
    extra = sorted(params - _KNOWN_EAGER_PARAMS - modelled)
    if extra:
        return f"its eager attention takes {', '.join(extra)}, which probe does not model"
    attrs = sorted(set(re.findall(r"\bmodule\.(\w+)", source)) - _KNOWN_MODULE_ATTRS)
    if attrs:
        return (f"its eager attention reads module.{', module.'.join(attrs)}, which probe does "
                "not model")
    return None


def _out_projection(model: nn.Module, name: str, module: nn.Module) -> str | None:
    for child in OUT_NAMES:
        if module._modules.get(child) is not None:
            return f"{name}.{child}" if name else child
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    for path in PARENT_OUT_NAMES:
        full = f"{parent}.{path}" if parent else path
        try:
            model.get_submodule(full)
        except AttributeError:
            continue
        return full
    return None


def find(model: nn.Module, root_name: str, root: nn.Module, what: str,
         modelled: frozenset = frozenset()) -> list[tuple[str, nn.Module, str]]:
    """(name, attention module, output projection name) of every attention module under
    ``root``, in module order; raises naming what was not found."""
    found, outside, no_out, surprises = [], [], [], []
    for rel, module in root.named_modules():
        qkv = _projections(module)
        if qkv is None:
            continue
        name = f"{root_name}.{rel}" if root_name and rel else (rel or root_name)
        if not _uses_interface(module):
            outside.append(f"{type(module).__name__} at {name!r}")
            continue
        out_name = _out_projection(model, name, module)
        if out_name is None:
            no_out.append(f"{type(module).__name__} at {name!r} ({qkv})")
            continue
        surprise = _eager_surprise(module, modelled)
        if surprise is not None:
            surprises.append(f"{type(module).__name__}: {surprise}")
            continue
        found.append((name, module, out_name))
    if not found:
        if surprises:
            raise UnsupportedModelError(
                f"{what}: {surprises[0]}; its captures would not equal the model's attention")
        if outside:
            raise UnsupportedModelError(
                f"{what}: its attention ({outside[0]}) computes attention itself instead of "
                "calling transformers' attention interface (ALL_ATTENTION_FUNCTIONS), so "
                "probe's backend never sees it. Models known to do this: "
                f"{', '.join(OUTSIDE_INTERFACE)}. Tested families: {supported_families()}")
        if no_out:
            raise UnsupportedModelError(
                f"{what}: found attention modules ({no_out[0]}) but no output projection: "
                f"looked for a child named {', '.join(OUT_NAMES)} or the parent's "
                f"{', '.join(PARENT_OUT_NAMES)}")
        raise UnsupportedModelError(
            f"{what}: found no attention module: no submodule has query/key/value projections "
            f"named {', '.join('/'.join(n) for n in QKV_NAMES)} or a fused projection named "
            f"{', '.join(FUSED_QKV_NAMES)}. Tested families: {supported_families()}")
    return found
