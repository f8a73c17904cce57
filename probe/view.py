"""A self-contained interactive HTML view of one example (or one pair): no server, no network.

The page holds its data inline (patterns quantised to 8 bits per cell, scaled to each head's
maximum, so values are exact to 1/255 of that maximum; base64) and its script
inline. The data is one JSON block with ``<``, ``>`` and ``&`` escaped, read with JSON.parse;
every text shown is set as text (``textContent``) or HTML-escaped, so no sentence or token
can inject markup or script. Pick a layer and head, switch raw / value-weighted attention, hover a token to see
what it attends to and what attends to it; for a pair run it shows original, counterfactual
and their difference on the aligned tokens side by side.

Element ids (stable, used by the browser test): ``#layer``, ``#head``, ``#mode-raw``,
``#mode-vw``, ``#status``, panels ``.panel[data-panel=original|counterfactual|difference]``
with tokens ``.tok[data-i]`` and a ``canvas``.
"""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np

from .align import align


def _quantise(stack: np.ndarray, signed: bool = False) -> dict:
    """[layer, head, n, n] -> base64 uint8 per cell and a scale per (layer, head)."""
    stack = np.asarray(stack, dtype=np.float64)
    scale = np.abs(stack).max(axis=(-1, -2))
    scale = np.where(scale > 0, scale, 1.0)
    unit = stack / scale[..., None, None]
    q = np.round((unit + 1) * 127.5) if signed else np.round(unit * 255)
    return {"data": base64.b64encode(q.clip(0, 255).astype(np.uint8).tobytes()).decode("ascii"),
            "scale": scale.round(6).tolist(), "signed": signed}


def _panel(name: str, tokens, pattern, vw=None) -> dict:
    panel = {"name": name, "tokens": list(tokens), "raw": _quantise(pattern)}
    if vw is not None:
        panel["vw"] = _quantise(vw)
    return panel


def _stack(example, component, layers):
    return np.stack([example[f"blocks.{l}.attn.{component}"] for l in layers])


def build_view(example, other=None, *, title: str | None = None) -> str:
    """HTML for ``example`` (and, for a pair, ``other`` = its counterfactual).

    >>> from probe.captures import Example
    >>> pattern = np.full((2, 3, 3), 1 / 3)          # [head, query, key]
    >>> ex = Example(["[CLS]", "hi", "[SEP]"], ["blocks.0.attn.pattern"], lambda k: pattern)
    >>> page = build_view(ex)
    >>> page.startswith("<!DOCTYPE html>"), "http" in page
    (True, False)
    """
    layers = sorted({int(k.split(".")[1]) for k in example if k.endswith(".pattern")})
    if not layers:
        raise ValueError("the example has no captured pattern to view")
    has_vw = all(f"blocks.{l}.attn.value_weighted" in example for l in layers)
    p0 = _stack(example, "pattern", layers)
    panels = [_panel("original" if other is not None else "example", example.tokens, p0,
                     _stack(example, "value_weighted", layers) if has_vw else None)]
    if other is not None:
        p1 = _stack(other, "pattern", layers)
        panels.append(_panel("counterfactual", other.tokens, p1,
                             _stack(other, "value_weighted", layers) if has_vw else None))
        al = align(example.tokens, other.tokens)  # only the matched tokens are used here
        mo, mc = al.matched_original, al.matched_counterfactual
        diff = p1[..., mc[:, None], mc[None, :]] - p0[..., mo[:, None], mo[None, :]]
        panel = {"name": "difference", "tokens": [other.tokens[j] for j in mc],
                 "raw": _quantise(diff, signed=True)}
        if has_vw:
            v0, v1 = _stack(example, "value_weighted", layers), _stack(other, "value_weighted", layers)
            panel["vw"] = _quantise(v1[..., mc[:, None], mc[None, :]] - v0[..., mo[:, None], mo[None, :]],
                                    signed=True)
        panels.append(panel)
    data = {"layers": layers, "heads": int(p0.shape[1]), "panels": panels, "has_vw": has_vw,
            "title": title or (example.text or " ".join(example.tokens))}
    values = {"TITLE": html.escape(data["title"]), "DATA": script_json(data)}
    # one pass: a text that contains a marker is never filled in a second time
    return re.sub(r"__(TITLE|DATA)__", lambda m: values[m.group(1)], _PAGE)


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


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>probe view: __TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
#controls { display: flex; gap: 16px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
#panels { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.panel { border: 1px solid #ddd; padding: 8px; border-radius: 6px; max-width: 100%; }
.panel h3 { margin: 0 0 6px 0; font-size: 14px; }
.tokens { display: flex; flex-wrap: wrap; gap: 2px; max-width: 720px; margin: 4px 0; }
.tok { padding: 1px 3px; border-radius: 3px; cursor: default; border: 1px solid transparent; }
.tok.hovered { border-color: #000; font-weight: bold; }
.strip-label { font-size: 12px; color: #666; }
#status { min-height: 2.6em; margin: 6px 0; padding: 4px 8px; background: #f4f4f4; border-radius: 4px; }
canvas { image-rendering: pixelated; border: 1px solid #ccc; }
</style></head><body>
<h2 id="title">__TITLE__</h2>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label><input type="radio" name="mode" id="mode-raw" value="raw" checked> attention</label>
  <label><input type="radio" name="mode" id="mode-vw" value="vw"> value-weighted</label>
</div>
<div id="status">Hover a token: its row (what it attends to) colours the upper strip, its column
(what attends to it) the lower strip.</div>
<div id="panels"></div>
<script id="probe-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("probe-data").textContent);
const state = { layer: 0, head: 0, mode: "raw", hover: null };
function decode(q) {
  const bin = atob(q.data); const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
for (const p of D.panels) { p.rawBytes = decode(p.raw); if (p.vw) p.vwBytes = decode(p.vw); }
function matrix(p) {
  const q = (state.mode === "vw" && p.vw) ? p.vw : p.raw;
  const bytes = (state.mode === "vw" && p.vw) ? p.vwBytes : p.rawBytes;
  const n = p.tokens.length, li = state.layer, h = state.head;
  const scale = q.scale[li][h], off = (li * D.heads + h) * n * n;
  return (i, j) => { const b = bytes[off + i * n + j];
    return q.signed ? (b / 127.5 - 1) * scale : b / 255 * scale; };
}
function colour(v, vmax, signed) {
  if (signed) { const a = Math.min(Math.abs(v) / (vmax || 1), 1);
    return v >= 0 ? `rgba(200,40,40,${a})` : `rgba(40,80,220,${a})`; }
  const a = Math.min(v / (vmax || 1), 1); return `rgba(30,120,80,${a})`;
}
function build() {
  const layer = document.getElementById("layer"), head = document.getElementById("head");
  D.layers.forEach((l, i) => layer.add(new Option(String(l), String(i))));
  for (let h = 0; h < D.heads; h++) head.add(new Option(String(h), String(h)));
  layer.onchange = () => { state.layer = +layer.value; render(); };
  head.onchange = () => { state.head = +head.value; render(); };
  for (const id of ["mode-raw", "mode-vw"]) document.getElementById(id).onchange = (e) => {
    state.mode = e.target.value; render(); };
  if (!D.has_vw) document.getElementById("mode-vw").disabled = true;
  const root = document.getElementById("panels");
  for (const p of D.panels) {
    const div = document.createElement("div"); div.className = "panel"; div.dataset.panel = p.name;
    div.innerHTML = `<h3>${p.name}</h3><div class="strip-label">attends to</div>
      <div class="tokens row"></div><div class="strip-label">attended by</div>
      <div class="tokens col"></div><canvas></canvas>`;
    for (const cls of ["row", "col"]) {
      const strip = div.querySelector(".tokens." + cls);
      p.tokens.forEach((t, i) => { const s = document.createElement("span");
        s.className = "tok"; s.dataset.i = i; s.textContent = t;
        s.onmouseenter = () => { state.hover = { panel: p.name, i }; render(); };
        strip.appendChild(s); });
    }
    p.el = div; root.appendChild(div);
  }
}
function render() {
  const lines = [];
  for (const p of D.panels) {
    const m = matrix(p), n = p.tokens.length, q = (state.mode === "vw" && p.vw) ? p.vw : p.raw;
    const vmax = q.scale[state.layer][state.head];
    const cell = Math.max(3, Math.min(28, Math.floor(360 / n)));
    const cv = p.el.querySelector("canvas"); cv.width = cell * n; cv.height = cell * n;
    const ctx = cv.getContext("2d"); ctx.clearRect(0, 0, cv.width, cv.height);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      ctx.fillStyle = colour(m(i, j), vmax, q.signed); ctx.fillRect(j * cell, i * cell, cell, cell); }
    const hv = state.hover && state.hover.panel === p.name ? state.hover.i : null;
    for (const cls of ["row", "col"]) {
      p.el.querySelectorAll(".tokens." + cls + " .tok").forEach((s) => {
        const j = +s.dataset.i; s.classList.toggle("hovered", j === hv);
        s.style.background = hv === null ? "" : colour(cls === "row" ? m(hv, j) : m(j, hv), vmax, q.signed);
      });
    }
    if (hv !== null) {
      let best = 0, bestIn = 0;
      for (let j = 0; j < n; j++) { if (m(hv, j) > m(hv, best)) best = j; if (m(j, hv) > m(bestIn, hv)) bestIn = j; }
      lines.push(`${p.name}: '${p.tokens[hv]}' (#${hv}) attends most to '${p.tokens[best]}' ` +
        `(#${best}, ${m(hv, best).toFixed(3)}); most attended by '${p.tokens[bestIn]}' ` +
        `(#${bestIn}, ${m(bestIn, hv).toFixed(3)})`);
    }
  }
  const mode = state.mode === "vw" ? "value-weighted" : "attention";
  document.getElementById("status").textContent =
    `layer ${D.layers[state.layer]}, head ${state.head}, ${mode}` + (lines.length ? " | " + lines.join(" | ") : "");
  document.body.dataset.layer = D.layers[state.layer]; document.body.dataset.head = state.head;
  document.body.dataset.mode = state.mode; document.body.dataset.ready = "1";
}
build(); render();
</script></body></html>
"""
