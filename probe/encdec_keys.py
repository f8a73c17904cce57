"""Which keys an :class:`~probe.encdec.EncoderDecoderProbe` exposes and, per attention
layer of each kind (encoder self-attention, decoder self-attention, decoder cross-attention),
which components its backend must capture for them.

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
