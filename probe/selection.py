"""What a probe captures: which keys it exposes and, per attention layer, which components
its backend must keep for them, for :class:`~probe.capture.AttentionProbe` (layers, keys and a
head selection) and :class:`~probe.encdec.EncoderDecoderProbe` (the same per kind of
attention: encoder self-attention, decoder self-attention, decoder cross-attention).

This module's one job is that selection; it imports :mod:`probe.names` and
:mod:`probe.errors` only.

>>> import torch
>>> layer = torch.nn.Identity()
>>> sites = [("encoder", "attn", [layer, layer]), ("decoder", "attn", [layer]),
...          ("decoder", "cross_attn", [layer])]
>>> exposed, plan = select_encdec_keys(sites, [-1], ["pattern"])
>>> exposed
['encoder.blocks.1.attn.pattern', 'decoder.blocks.0.attn.pattern', 'decoder.blocks.0.cross_attn.pattern']
>>> sorted(plan[("encoder", "attn", 1)])
['pattern']
"""

from __future__ import annotations

import numbers

from . import names
from .errors import InputError


def is_index(value) -> bool:
    """A whole number, as an integer type or a string of digits (not a bool, not 1.5).

    >>> [is_index(v) for v in (3, "-1", 1.5, True, "2.0")]
    [True, True, False, False, False]
    """
    if isinstance(value, str):
        return value.strip().lstrip("-").isdigit()
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def layer_indices(layers, n: int, where: str) -> list[int]:
    """``layers`` (one index or several; negative ones count from the end) as ints, refused
    unless whole numbers in ``-n..n-1`` (``where``: "the model has", for the message).

    >>> layer_indices([0, -1, "2"], 6, "the model has"), layer_indices(3, 6, "the model has")
    ([0, -1, 2], [3])
    """
    one = isinstance(layers, (str, numbers.Number)) or not hasattr(layers, "__iter__")
    out = []
    for layer in ([layers] if one else layers):
        if not is_index(layer):
            raise InputError(f"layer {layer!r} is not a layer index (a whole number)")
        if not -n <= int(layer) < n:
            raise InputError(f"layer {layer} does not exist: {where} layers 0..{n - 1}")
        out.append(int(layer))
    return out


_HEADS_FORM = ("comma-separated LAYER.HEAD items, HEAD a head index or * for every head of the "
               "layer, e.g. 3.7,5.*")


def parse_heads(spec, n_layers: int, n_heads=None) -> dict[int, tuple[int, ...]]:
    """A head selection as ``{layer: sorted query heads}``.

    ``spec``: ``"3.7,5.*"`` (``*``: every head of the layer), a list of such items, or a
    mapping ``{layer: heads}`` (heads a list, one int, or ``"*"``). Negative layers count
    from the end. ``n_heads``: the number of query heads of a layer (an int, a function of
    the layer, or None when unknown: heads are then checked at capture time; ``*`` needs it).

    >>> parse_heads("3.7,5.*,3.1", n_layers=6, n_heads=8)
    {3: (1, 7), 5: (0, 1, 2, 3, 4, 5, 6, 7)}
    """
    if spec is None:
        return {}
    items = []
    if isinstance(spec, dict):
        for layer, hs in spec.items():
            hs = [hs] if isinstance(hs, (int, str)) else list(hs)
            items += [(layer, h, f"{layer}.{h}") for h in hs]
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        for part in parts:
            text = str(part).strip()
            layer, dot, head = text.partition(".")
            if not dot or not is_index(layer) or not (
                    head.strip() == "*" or head.strip().isdigit()):
                raise InputError(f"heads {text!r} is not LAYER.HEAD: expected {_HEADS_FORM}")
            items.append((int(layer), head.strip(), text))
    chosen: dict[int, set[int]] = {}
    for layer, head, text in items:
        if not is_index(layer) or not -n_layers <= int(layer) < n_layers:
            raise InputError(f"heads {text!r}: layer {layer} does not exist: the model has "
                             f"layers 0..{n_layers - 1}")
        layer = int(layer) % n_layers
        count = n_heads(layer) if callable(n_heads) else n_heads
        if head == "*":
            if count is None:
                raise InputError(f"heads {text!r}: the number of heads of layer {layer} is "
                                 "unknown here; list the heads")
            chosen.setdefault(layer, set()).update(range(count))
            continue
        if not is_index(head) or int(head) < 0:
            raise InputError(f"heads {text!r}: {head!r} is not a head index: expected {_HEADS_FORM}")
        head = int(head)
        if count is not None and head >= count:
            raise InputError(f"heads {text!r}: head {head} does not exist: layer {layer} has "
                             f"heads 0..{count - 1}")
        chosen.setdefault(layer, set()).add(head)
    if not chosen and items == []:
        raise InputError(f"the head selection is empty: expected {_HEADS_FORM}")
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(chosen.items())}


def select_keys(layers, chosen_layers, keys, heads=None) -> tuple[list[str], dict[int, frozenset]]:
    """The keys a probe exposes, and per layer the components it must capture for them.

    ``layers``: the model's :class:`~probe.architectures.AttentionLayer` list; ``chosen_layers``
    and ``keys`` as given to :class:`AttentionProbe`; ``heads``: the parsed head selection
    (:func:`parse_heads`), whose layers are captured too (only they, when
    ``chosen_layers`` is None).
    """
    n = len(layers)
    heads = heads or {}
    if chosen_layers is None:
        chosen = sorted(heads) if heads else list(range(n))
    else:
        chosen = [layer % n for layer in layer_indices(chosen_layers, n, "the model has")]
        chosen += [layer for layer in heads if layer not in chosen]
    pairs = []
    # `sink` by default only for models with learned sinks (zeros elsewhere: no information)
    has_sinks = any(getattr(layer.module, "sinks", None) is not None for layer in layers)
    default = tuple(c for c in names.COMPONENTS if c != "sink" or has_sinks)
    for item in ([keys] if isinstance(keys, str) else (keys or default)):
        if not isinstance(item, str):
            raise InputError(f"keys must be component names or full keys (strings), got {item!r}; "
                             f"components: {', '.join(names.COMPONENTS)}")
        if item.startswith("blocks."):
            layer, component = names.parse_key(item)
            if layer >= n:
                raise InputError(f"{item!r}: the model has layers 0..{n - 1}")
            pairs.append((layer, component))
        else:
            names.normalize_components([item])
            pairs.extend((layer, item) for layer in chosen)
    if chosen_layers is not None and keys is not None:
        pairs = [(layer, c) for layer, c in pairs if layer in chosen]
    if not pairs:
        raise InputError("the selection of layers and keys is empty")
    pairs = sorted(set(pairs), key=lambda lc: (lc[0], names.COMPONENTS.index(lc[1])))
    exposed = [names.key(layer, c) for layer, c in pairs]
    plan: dict[int, set[str]] = {}
    for layer, c in pairs:
        plan.setdefault(layer, set()).update(names.required_components([c]))
    return exposed, {layer: frozenset(cs) for layer, cs in plan.items()}


def heads_per_layer(model) -> int | None:
    """The number of query heads of the model's attention layers, from its config (None when
    the config does not say; heads are then checked at capture time)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_attention_heads", "n_head", "n_heads", "encoder_attention_heads"):
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def narrowed_heads(heads, layers, model, plan) -> dict[int, tuple[int, ...]]:
    """``heads`` (as the probe's ``heads`` argument) parsed for a probe that captures the layers
    of ``plan``; refused when they name a layer the probe does not capture."""
    chosen = parse_heads(heads, len(layers), heads_per_layer(model))
    outside = sorted(set(chosen) - set(plan))
    if outside:
        raise InputError(f"heads: layers {outside} are not captured by this probe (it "
                         f"captures layers {sorted(plan)}); give heads= (or layers=) "
                         "to AttentionProbe to capture them")
    return chosen


def select_encdec_keys(sites, layers, keys) -> tuple[list[str], dict[tuple, frozenset]]:
    """The keys an encoder-decoder probe exposes, and per ``(stack, site, layer)`` the
    components it must capture for them.

    ``sites``: :meth:`probe.architectures.EncoderDecoderLayers.sites`; ``layers`` and ``keys``
    as given to :class:`~probe.encdec.EncoderDecoderProbe`.
    """
    counts = {(stack, site): len(ls) for stack, site, ls in sites}
    n_max = max(counts.values())
    if layers is None:
        chosen = None
    else:
        chosen = layer_indices(layers, n_max, "the stacks have")

    def in_stack(n):  # the chosen layers that exist in a stack of n layers
        if chosen is None:
            return list(range(n))
        return sorted({c % n for c in chosen if -n <= c < n})

    default = tuple(c for c in names.COMPONENTS if c != "sink")
    triples = []
    for item in ([keys] if isinstance(keys, str) else (keys or default)):
        if not isinstance(item, str):
            raise InputError(f"keys must be component names or full keys (strings), got "
                             f"{item!r}; components: {', '.join(names.COMPONENTS)}")
        if "." in item:
            parts = names.parse_key(item)
            if parts.stack is None:
                raise InputError(
                    f"{item!r}: an encoder-decoder's keys name their stack, e.g. "
                    f"'encoder.{item}', 'decoder.{item}' or "
                    f"'decoder.{item.replace('.attn.', '.cross_attn.')}'")
            n = counts[(parts.stack, parts.site)]
            if parts.layer >= n:
                raise InputError(f"{item!r}: the {parts.stack} has layers 0..{n - 1}")
            if chosen is None or parts.layer in in_stack(n):
                triples.append((parts.stack, parts.site, parts.layer, parts.component))
        else:
            names.normalize_components([item])
            for stack, site, ls in sites:
                triples.extend((stack, site, layer, item) for layer in in_stack(len(ls)))
    if not triples:
        raise InputError("the selection of layers and keys is empty")
    order = {(stack, site): i for i, (stack, site, _) in enumerate(sites)}
    triples = sorted(set(triples), key=lambda t: (order[t[:2]], t[2],
                                                  names.COMPONENTS.index(t[3])))
    exposed = [names.key(layer, c, stack=stack, site=site) for stack, site, layer, c in triples]
    plan: dict[tuple, set[str]] = {}
    for stack, site, layer, c in triples:
        plan.setdefault((stack, site, layer), set()).update(names.required_components([c]))
    return exposed, {k: frozenset(cs) for k, cs in plan.items()}
