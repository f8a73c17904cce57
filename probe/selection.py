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

from . import names
from .errors import InputError


def select_keys(layers, chosen_layers, keys, heads=None) -> tuple[list[str], dict[int, frozenset]]:
    """The keys a probe exposes, and per layer the components it must capture for them.

    ``layers``: the model's :class:`~probe.architectures.AttentionLayer` list; ``chosen_layers``
    and ``keys`` as given to :class:`AttentionProbe`; ``heads``: the parsed head selection
    (:func:`probe.names.parse_heads`), whose layers are captured too (only they, when
    ``chosen_layers`` is None).
    """
    n = len(layers)
    heads = heads or {}
    if chosen_layers is None:
        chosen = sorted(heads) if heads else list(range(n))
    else:
        chosen = []
        for layer in ([chosen_layers] if isinstance(chosen_layers, int) else chosen_layers):
            if not -n <= int(layer) < n:
                raise InputError(f"layer {layer} does not exist: the model has layers 0..{n - 1}")
            chosen.append(int(layer) % n)
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
    chosen = names.parse_heads(heads, len(layers), heads_per_layer(model))
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
        chosen = []
        for layer in ([layers] if isinstance(layers, int) else layers):
            if not -n_max <= int(layer) < n_max:
                raise InputError(f"layer {layer} does not exist: the stacks have layers "
                                 f"0..{n_max - 1}")
            chosen.append(int(layer))

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
