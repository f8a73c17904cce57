"""A self-contained interactive HTML view of one example (or one pair): no server, no network.

The page holds its data inline (patterns quantised to 8 bits per cell, scaled to each head's
maximum |value| in each panel, so a shown value is exact to 1/255 of that scale; base64) and
its script inline. The data is one JSON block with ``<``, ``>`` and ``&`` escaped, read with
JSON.parse; every text shown is set as text (``textContent``) or HTML-escaped, so no sentence
or token can inject markup or script.

What it shows: an all-heads overview (layer x head thumbnails; click one to open it), and
for the chosen layer and head one heat map per panel with query tokens down the side, key
tokens along the top, a colour bar with numeric ticks and a tooltip on every cell (the value,
its query and key tokens). Original and counterfactual share one colour scale unless the
reader picks "per panel" (then each panel's colour bar says so); the difference
(counterfactual - original on the aligned tokens) has a diverging map centred on 0 with its
own symmetric scale. Cells are at least 10 px (zoom 4-28 px) and the maps scroll, so 200
tokens stay readable. Hovering a token in the strips colours what it attends to and what
attends to it.

Element ids and classes (stable, used by the browser test): ``#layer``, ``#head``,
``#mode-raw``, ``#mode-vw``, ``#scale``, ``#zoom``, ``#overview-of``, ``canvas.thumb[data-layer]
[data-head]``, ``#status``, ``#tooltip`` (``data-value``, ``data-i``, ``data-j``), ``#footnote``,
panels ``.panel[data-panel=original|counterfactual|difference|example]`` (``data-vmax``) with
token strips ``.tokens.row|col .tok[data-i]``, axis labels ``.qlabel`` / ``.klabel``, the map
``canvas.heat`` in ``.scroll`` and ``.colorbar`` with ``.cb-tick`` and ``.cb-label``.

Files, one job each (an arrow: may import)::

    panels.py   the numbers: 8-bit panels of patterns, the difference on aligned tokens
                                                      (probe.names, probe.align; numpy)
    page.py     build_view and script_json: the page filled with the panels, safely
                                                      -> panels (probe.names, probe.captures)
    page.html   the page: controls, overview, panels, footnote, with __STYLE__, __SCRIPT__,
                __TITLE__ and __DATA__ markers
    page.css    its style
    page.js     its script: decoding the panels, drawing, tooltips, hover (no network)

Everything public is importable from ``probe.view`` itself.
"""

from .page import build_view, script_json

__all__ = ["build_view", "script_json"]
