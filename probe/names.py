"""Canonical names: the one place where capture keys and their axes are defined.

A captured tensor is addressed by a *key* ``blocks.{layer}.attn.{component}``, the same string
in memory (``example["blocks.3.attn.pattern"]``), on disk and in analyses. Each component has a
fixed tuple of axis names from one vocabulary::

    example batch layer head kv_head query key token source d_head pair

Imports only :mod:`probe.errors`, so every module may import it.

>>> key(3, "pattern")
'blocks.3.attn.pattern'
>>> parse_key("blocks.3.attn.pattern")
(3, 'pattern')
>>> AXES["k"]
('kv_head', 'token', 'd_head')

Encoder-decoders (:mod:`probe.encdec`) name the stack, and the decoder's cross-attention is a
second *site* of each decoder block: ``encoder.blocks.{l}.attn.*``, ``decoder.blocks.{l}.attn.*``
and ``decoder.blocks.{l}.cross_attn.*``. Cross-attention keys are encoder tokens, so where
self-attention has ``key`` (or ``token`` for k, v, value_norm) cross-attention has ``source``:

>>> key(1, "pattern", stack="decoder", site="cross_attn")
'decoder.blocks.1.cross_attn.pattern'
>>> parts = parse_key("decoder.blocks.1.cross_attn.pattern")
>>> parts, parts.stack, parts.site
((1, 'pattern'), 'decoder', 'cross_attn')
>>> axes("decoder.blocks.1.cross_attn.pattern")
('head', 'query', 'source')

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

#: The axis of encoder tokens read by a decoder's cross-attention (its keys and values); it is
#: cut with the encoder's padding, not the decoder's, so it is not in SEQUENCE_AXES.
SOURCE = "source"

#: Stacks of an encoder-decoder, and the attention sites of a block.
STACKS: tuple[str, ...] = ("encoder", "decoder")
SITES: tuple[str, ...] = ("attn", "cross_attn")

#: Axes of each component at a cross-attention site: key positions are encoder tokens.
CROSS_AXES: dict[str, tuple[str, ...]] = {
    c: tuple(SOURCE if a == "key" or (a == "token" and c in ("k", "v", "value_norm")) else a
             for a in axes_)
    for c, axes_ in AXES.items()
}

_KEY_RE = re.compile(r"^(?:(encoder|decoder)\.)?blocks\.(\d+)\.(attn|cross_attn)\.([a-z_]+)$")
_KEY_FORMS = ("'blocks.<layer>.attn.<component>' (single-stack models), "
              "'encoder.blocks.<layer>.attn.<component>', "
              "'decoder.blocks.<layer>.attn.<component>' or "
              "'decoder.blocks.<layer>.cross_attn.<component>' (encoder-decoders)")


class KeyParts(tuple):
    """What :func:`parse_key` returns: the pair ``(layer, component)``, which unpacks and compares
    like a tuple, plus ``stack`` (None, "encoder" or "decoder") and ``site`` ("attn" or
    "cross_attn") as attributes."""

    def __new__(cls, layer: int, component: str, stack: str | None = None, site: str = "attn"):
        self = super().__new__(cls, (layer, component))
        self.stack, self.site = stack, site
        return self

    def __getnewargs__(self):  # pickle and copy rebuild it with its attributes
        return (self[0], self[1], self.stack, self.site)

    @property
    def layer(self) -> int:
        return self[0]

    @property
    def component(self) -> str:
        return self[1]


def key(layer: int, component: str, *, stack: str | None = None, site: str = "attn") -> str:
    """The canonical key of ``component`` at ``layer`` (of ``stack``'s ``site`` in an
    encoder-decoder).

    >>> key(0, "q"), key(0, "q", stack="encoder")
    ('blocks.0.attn.q', 'encoder.blocks.0.attn.q')
    """
    if component not in AXES:
        raise InputError(
            f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}"
        )
    if stack is not None and stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}: expected one of {', '.join(STACKS)} or None")
    if site not in SITES:
        raise InputError(f"unknown attention site {site!r}: expected one of {', '.join(SITES)}")
    if site == "cross_attn" and stack != "decoder":
        raise InputError("cross-attention ('cross_attn') exists only in the decoder of an "
                         f"encoder-decoder: use stack='decoder', got stack={stack!r}")
    prefix = f"{stack}." if stack is not None else ""
    return f"{prefix}blocks.{int(layer)}.{site}.{component}"


def parse_key(name: str) -> KeyParts:
    """Split a canonical key into ``(layer, component)``; ``.stack`` and ``.site`` tell where.

    >>> parse_key("blocks.11.attn.value_weighted")
    (11, 'value_weighted')
    >>> parse_key("encoder.blocks.0.attn.q").stack
    'encoder'
    """
    match = _KEY_RE.match(name) if isinstance(name, str) else None
    if (match is None or match.group(4) not in AXES
            or (match.group(3) == "cross_attn" and match.group(1) != "decoder")):
        raise InputError(
            f"{name!r} is not a capture key: expected {_KEY_FORMS} with component one of "
            f"{', '.join(COMPONENTS)}, e.g. 'blocks.3.attn.pattern'"
        )
    stack, layer, site, component = match.groups()
    return KeyParts(int(layer), component, stack, site)


def axes(name: str) -> tuple[str, ...]:
    """The axes of one example's array under key ``name`` (cross-attention keys read encoder
    tokens: axis ``source``).

    >>> axes("blocks.0.attn.k"), axes("decoder.blocks.0.cross_attn.k")
    (('kv_head', 'token', 'd_head'), ('kv_head', 'source', 'd_head'))
    """
    parts = parse_key(name)
    return (CROSS_AXES if parts.site == "cross_attn" else AXES)[parts.component]


def sibling(name: str, component: str) -> str:
    """The key of ``component`` at the same layer, stack and site as key ``name``.

    >>> sibling("decoder.blocks.2.cross_attn.value_weighted", "pattern")
    'decoder.blocks.2.cross_attn.pattern'
    """
    parts = parse_key(name)
    return key(parts.layer, component, stack=parts.stack, site=parts.site)


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head ``head`` reads in a grouped-query model.

    >>> [kv_head_of(h, n_heads=8, n_kv_heads=2) for h in range(8)]
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    if n_heads % n_kv_heads:
        raise InputError(f"{n_heads} query heads cannot be grouped over {n_kv_heads} key/value heads")
    return head // (n_heads // n_kv_heads)


def kv_heads_of(heads, n_heads: int, n_kv_heads: int) -> tuple[int, ...]:
    """The key/value heads that query heads ``heads`` read, sorted, each once.

    >>> kv_heads_of([1, 6, 7], n_heads=8, n_kv_heads=2)
    (0, 1)
    """
    return tuple(sorted({kv_head_of(h, n_heads, n_kv_heads) for h in heads}))


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
