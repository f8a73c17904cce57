"""Canonical names: the one place where capture keys and their axes are defined.

A captured tensor is addressed by a *key* ``blocks.{layer}.attn.{component}``, the same string
in memory (``example["blocks.3.attn.pattern"]``), on disk and in analyses. Each component has a
fixed tuple of axis names from one vocabulary::

    example batch layer head kv_head query key token d_head pair

>>> key(3, "pattern")
'blocks.3.attn.pattern'
>>> parse_key("blocks.3.attn.pattern")
(3, 'pattern')
>>> AXES["k"]
('kv_head', 'token', 'd_head')

Grouped-query models keep their own number of key/value heads: query head ``h`` reads key/value
head ``h // (n_heads // n_kv_heads)`` (see :func:`kv_head_of`).
"""

from __future__ import annotations

import re

from .errors import InputError

#: Axes of one example's tensor for each component (padding removed).
AXES: dict[str, tuple[str, ...]] = {
    # queries after rotary embeddings where the model has them
    "q": ("head", "token", "d_head"),
    # keys (after rotary) and values, before grouped-query repetition
    "k": ("kv_head", "token", "d_head"),
    "v": ("kv_head", "token", "d_head"),
    # q k^T * scale + mask, before the softmax; masked entries are -inf
    "scores": ("head", "query", "key"),
    # the attention weights: softmax of scores over the key axis
    "pattern": ("head", "query", "key"),
    # per-head output: pattern @ v
    "z": ("head", "token", "d_head"),
    # ||f_h(x_j)||: value vector (bias included) through head h's slice of the output projection
    "value_norm": ("head", "token"),
    # ||alpha_hij f_h(x_j)|| = pattern * value_norm (Kobayashi et al. 2020)
    "value_weighted": ("head", "query", "key"),
    # share of a learned attention sink (gpt-oss) in each query's softmax, so that
    # pattern.sum(key) + sink == 1; zeros for models without sinks
    "sink": ("head", "query"),
}

#: Every component, in a stable order.
COMPONENTS: tuple[str, ...] = tuple(AXES)

#: Components computed from others instead of being captured or stored.
DERIVED: dict[str, tuple[str, ...]] = {"value_weighted": ("pattern", "value_norm")}

#: Axes that index token positions of one example (sliced when padding is removed).
SEQUENCE_AXES = frozenset({"token", "query", "key"})

_KEY_RE = re.compile(r"^blocks\.(\d+)\.attn\.([a-z_]+)$")


def key(layer: int, component: str) -> str:
    """The canonical key of ``component`` at ``layer``.

    >>> key(0, "q")
    'blocks.0.attn.q'
    """
    if component not in AXES:
        raise InputError(
            f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}"
        )
    return f"blocks.{int(layer)}.attn.{component}"


def parse_key(name: str) -> tuple[int, str]:
    """Split a canonical key into ``(layer, component)``.

    >>> parse_key("blocks.11.attn.value_weighted")
    (11, 'value_weighted')
    """
    match = _KEY_RE.match(name)
    if match is None or match.group(2) not in AXES:
        raise InputError(
            f"{name!r} is not a capture key: expected 'blocks.<layer>.attn.<component>' with "
            f"component one of {', '.join(COMPONENTS)}, e.g. 'blocks.3.attn.pattern'"
        )
    return int(match.group(1)), match.group(2)


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head ``head`` reads in a grouped-query model.

    >>> [kv_head_of(h, n_heads=8, n_kv_heads=2) for h in range(8)]
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    if n_heads % n_kv_heads:
        raise InputError(f"{n_heads} query heads cannot be grouped over {n_kv_heads} key/value heads")
    return head // (n_heads // n_kv_heads)


def normalize_components(components) -> tuple[str, ...]:
    """Validate a selection of components; ``None`` means all of them.

    >>> normalize_components(["pattern", "q"])
    ('q', 'pattern')
    """
    if components is None:
        return COMPONENTS
    if isinstance(components, str):
        components = [components]
    chosen = set()
    for c in components:
        if c not in AXES:
            raise InputError(
                f"unknown component {c!r}: expected one of {', '.join(COMPONENTS)}"
            )
        chosen.add(c)
    if not chosen:
        raise InputError("no component selected: give at least one of " + ", ".join(COMPONENTS))
    return tuple(c for c in COMPONENTS if c in chosen)


def required_components(components) -> tuple[str, ...]:
    """The components that must be captured to serve ``components`` (derived ones expanded).

    >>> required_components(["value_weighted"])
    ('pattern', 'value_norm')
    """
    need = set()
    for c in normalize_components(components):
        need.update(DERIVED.get(c, (c,)))
    return tuple(c for c in COMPONENTS if c in need)


def layers_of(keys, component: str | None = None) -> list[int]:
    """Sorted layers among ``keys`` (an Example iterates its keys), optionally only those
    holding ``component``.

    >>> layers_of(["blocks.2.attn.pattern", "blocks.0.attn.q", "blocks.0.attn.pattern"], "pattern")
    [0, 2]
    """
    found = set()
    for k in keys:
        layer, comp = parse_key(k)
        if component is None or comp == component:
            found.add(layer)
    return sorted(found)
