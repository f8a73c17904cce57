"""The page of a view: the panels of an example (or a pair) as inline JSON in one
self-contained HTML file whose style and script are ``page.css`` and ``page.js``, set into
``page.html``.

One job: :func:`build_view`: choose the layers, build the panels, fill the page safely.
Imports ``probe.names``, ``probe.captures`` and the package's ``panels``.
"""

from __future__ import annotations

import functools
import html
import json
import re
from importlib import resources

from .. import names
from ..captures import require_every_head
from .panels import difference_panel, layer_stack, pattern_panel


@functools.cache
def _page() -> str:
    """page.html with page.css and page.js set in (once: they are files of this package)."""
    files = resources.files(__package__)
    parts = {marker: files.joinpath(name).read_text(encoding="utf-8")
             for marker, name in (("STYLE", "page.css"), ("SCRIPT", "page.js"))}
    page = files.joinpath("page.html").read_text(encoding="utf-8")
    return re.sub(r"__(STYLE|SCRIPT)__", lambda m: parts[m.group(1)], page)


def build_view(example, other=None, *, title: str | None = None) -> str:
    """HTML for ``example`` (and, for a pair, ``other`` = its counterfactual).

    >>> import numpy as np
    >>> from probe.captures import Example
    >>> pattern = np.full((2, 3, 3), 1 / 3)          # [head, query, key]
    >>> ex = Example(["[CLS]", "hi", "[SEP]"], ["blocks.0.attn.pattern"], lambda k: pattern)
    >>> page = build_view(ex)
    >>> page.startswith("<!DOCTYPE html>"), "http" in page
    (True, False)
    """
    require_every_head(example, "the view")
    layers = sorted({layer for layer, component in map(names.parse_key, example)
                     if component == "pattern"})
    if not layers:
        raise ValueError("the example has no captured pattern to view")
    has_vw = all(names.key(layer, "value_weighted") in example for layer in layers)
    if other is not None:
        has_vw = has_vw and all(names.key(layer, "value_weighted") in other for layer in layers)
    p0 = layer_stack(example, "pattern", layers)
    panels = [pattern_panel("original" if other is not None else "example", example.tokens, p0,
                            layer_stack(example, "value_weighted", layers) if has_vw else None)]
    if other is not None:
        panels.append(pattern_panel("counterfactual", other.tokens,
                                    layer_stack(other, "pattern", layers),
                                    layer_stack(other, "value_weighted", layers) if has_vw else None))
        panels.append(difference_panel(example, other, layers, has_vw))
    data = {"layers": layers, "heads": int(p0.shape[1]), "panels": panels, "has_vw": has_vw,
            "title": title or (example.text or " ".join(example.tokens))}
    values = {"TITLE": html.escape(data["title"]), "DATA": script_json(data)}
    # one pass: a text that contains a marker is never filled in a second time
    return re.sub(r"__(TITLE|DATA)__", lambda m: values[m.group(1)], _page())


def script_json(data) -> str:
    """JSON that is inert inside ``<script type="application/json">``: ``<``, ``>`` and ``&``
    (so no ``</script>`` or ``<!--`` can end or bend the block) and U+2028/2029 escaped.

    >>> print(script_json({"t": "</script><!--&"}))
    {"t": "\\u003c/script\\u003e\\u003c!--\\u0026"}
    """
    text = json.dumps(data)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text
