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
"""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np

from . import names
from .align import align
from .captures import require_every_head


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
    panel = {"name": name, "kind": "pattern", "tokens": list(tokens), "raw": _quantise(pattern)}
    if vw is not None:
        panel["vw"] = _quantise(vw)
    return panel


def _stack(example, component, layers):
    return np.stack([example[names.key(layer, component)] for layer in layers])


def _difference(example, other, layers, has_vw) -> dict:
    """counterfactual - original on the aligned (matched) tokens: inserted, deleted and replaced
    tokens (the cue) have no partner, so their rows and columns are left out and named."""
    al = align(example.tokens, other.tokens)
    mo, mc = al.matched_original, al.matched_counterfactual
    left_out = ([f"{other.tokens[j]} (#{j}, counterfactual)" for j in sorted(set(range(len(other.tokens)))
                                                                          - set(mc.tolist()))]
                + [f"{example.tokens[i]} (#{i}, original)" for i in sorted(set(range(len(example.tokens)))
                                                                         - set(mo.tolist()))])

    def diff(component):
        a, b = _stack(example, component, layers), _stack(other, component, layers)
        return b[..., mc[:, None], mc[None, :]] - a[..., mo[:, None], mo[None, :]]

    panel = {"name": "difference", "kind": "difference", "tokens": [other.tokens[j] for j in mc],
             "index_original": mo.tolist(), "index_counterfactual": mc.tolist(),
             "left_out": left_out, "raw": _quantise(diff("pattern"), signed=True)}
    if has_vw:
        panel["vw"] = _quantise(diff("value_weighted"), signed=True)
    return panel


def build_view(example, other=None, *, title: str | None = None) -> str:
    """HTML for ``example`` (and, for a pair, ``other`` = its counterfactual).

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
    p0 = _stack(example, "pattern", layers)
    panels = [_panel("original" if other is not None else "example", example.tokens, p0,
                     _stack(example, "value_weighted", layers) if has_vw else None)]
    if other is not None:
        panels.append(_panel("counterfactual", other.tokens, _stack(other, "pattern", layers),
                             _stack(other, "value_weighted", layers) if has_vw else None))
        panels.append(_difference(example, other, layers, has_vw))
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
#panels { display: flex; gap: 20px; flex-wrap: wrap; align-items: flex-start; }
.panel { border: 1px solid #ddd; padding: 8px; border-radius: 6px; max-width: 100%; box-sizing: border-box; }
.panel h3 { margin: 0 0 4px 0; font-size: 14px; }
.note { font-size: 12px; color: #555; max-width: 720px; margin-bottom: 4px; }
.tokens { display: flex; flex-wrap: wrap; gap: 2px; max-width: 720px; margin: 4px 0; }
.tok { padding: 1px 3px; border-radius: 3px; cursor: default; border: 1px solid transparent; }
.tok.hovered { border-color: #000; font-weight: bold; }
.strip-label { font-size: 12px; color: #666; }
#status { min-height: 2.6em; margin: 6px 0; padding: 4px 8px; background: #f4f4f4; border-radius: 4px; }
.scroll { overflow: auto; max-width: 760px; max-height: 760px; border: 1px solid #eee; }
.matrix { position: relative; }
.toprow { display: flex; position: sticky; top: 0; z-index: 3; background: #fff; }
.mbody { display: flex; }
.corner { position: sticky; left: 0; z-index: 4; background: #fff; font-size: 10px; color: #666; flex: none;
  display: flex; align-items: flex-end; justify-content: flex-end; padding: 2px; box-sizing: border-box; }
.klabels { display: flex; align-items: flex-end; flex: none; }
.qlabels { position: sticky; left: 0; z-index: 2; background: #fff; flex: none; }
.klabel { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; text-align: left; box-sizing: border-box; }
.qlabel { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; text-align: right;
  padding-right: 3px; box-sizing: border-box; }
.klabel.hl, .qlabel.hl { background: #ffe08a; font-weight: bold; }
canvas.heat { image-rendering: pixelated; display: block; cursor: crosshair; flex: none; }
.colorbar { margin-top: 6px; width: 260px; }
.colorbar canvas { width: 240px; height: 12px; display: block; margin: 0 10px; border: 1px solid #999;
  image-rendering: pixelated; }
.cb-ticks { position: relative; height: 16px; margin: 0 10px; font-size: 11px; }
.cb-tick { position: absolute; transform: translateX(-50%); top: 1px; }
.cb-tick::before { content: ""; position: absolute; left: 50%; top: -3px; height: 3px; border-left: 1px solid #333; }
.cb-label { font-size: 11px; color: #333; }
#tooltip { position: fixed; z-index: 10; pointer-events: none; background: #fff; border: 1px solid #333;
  border-radius: 4px; padding: 4px 6px; font-size: 12px; box-shadow: 0 2px 6px rgba(0,0,0,.2); max-width: 420px; }
#tooltip .tt-value { font-weight: bold; font-size: 14px; }
#overview summary { font-weight: bold; cursor: pointer; margin: 6px 0; }
#thumbs { display: grid; gap: 3px; align-items: center; justify-content: start; margin: 4px 0; }
#thumbs .lab { font-size: 11px; color: #555; text-align: center; }
canvas.thumb { width: 52px; height: 52px; image-rendering: pixelated; border: 2px solid transparent; cursor: pointer; }
canvas.thumb.current { border-color: #d62728; }
#footnote { font-size: 12px; color: #555; max-width: 900px; margin-top: 12px; }
</style></head><body>
<h2 id="title">__TITLE__</h2>
<div id="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label><input type="radio" name="mode" id="mode-raw" value="raw" checked> attention</label>
  <label><input type="radio" name="mode" id="mode-vw" value="vw"> value-weighted</label>
  <label>colour scale <select id="scale"><option value="shared" selected>shared by the compared panels</option>
    <option value="panel">per panel (each its own maximum)</option></select></label>
  <label>cell size <select id="zoom"><option value="auto" selected>auto</option><option>4</option>
    <option>6</option><option>8</option><option>10</option><option>12</option><option>16</option>
    <option>20</option><option>28</option></select> px</label>
</div>
<details id="overview" open><summary>All heads of <select id="overview-of"></select>
  (rows: layers, columns: heads; click a thumbnail to open it below)</summary>
  <div id="thumbs"></div><div class="note" id="overview-note"></div></details>
<div id="status">Hover a cell for its exact value; hover a token: its row (what it attends to) colours
the upper strip, its column (what attends to it) the lower strip.</div>
<div id="panels"></div>
<div id="tooltip" hidden><div class="tt-value"></div><div class="tt-q"></div><div class="tt-k"></div>
<div class="tt-where"></div></div>
<p id="footnote">Values are stored in this page at 8 bits per cell, each head of each panel scaled
to its own largest |value|: a value shown (tooltip, status line) is the dequantised value, exact to
within 1/255 of that scale (the &plusmn; in the tooltip). Colours: attention (or value-weighted
attention) on one scale shared by the original and the counterfactual, from 0 to the larger of
their maxima at this head, unless &ldquo;per panel&rdquo; is chosen (then each panel says so); the
difference (counterfactual &minus; original, on the aligned tokens only) on a diverging map
centred on 0 with its own symmetric scale. Rows are queries, columns keys.</p>
<script id="probe-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("probe-data").textContent);
const state = { layer: 0, head: 0, mode: "raw", scale: "shared", zoom: "auto", hover: null, overview: 0 };
function lut(stops) {
  const out = new Uint8ClampedArray(256 * 3);
  for (let k = 0; k < 256; k++) {
    const x = k / 255 * (stops.length - 1), a = Math.min(Math.floor(x), stops.length - 2), f = x - a;
    for (let c = 0; c < 3; c++) {
      const lo = parseInt(stops[a].substr(1 + 2 * c, 2), 16), hi = parseInt(stops[a + 1].substr(1 + 2 * c, 2), 16);
      out[3 * k + c] = Math.round(lo + (hi - lo) * f); }
  }
  return out;
}
const SEQ = lut(["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]);
const DIV = lut(["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582",
                 "#d6604d", "#b2182b", "#67001f"]);
function decode(q) {
  const bin = atob(q.data); const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
for (const p of D.panels) { p.rawBytes = decode(p.raw); if (p.vw) p.vwBytes = decode(p.vw); }
const vwOn = () => state.mode === "vw" && D.has_vw;
const comp = (p) => vwOn() ? p.vw : p.raw;
const bytesOf = (p) => vwOn() ? p.vwBytes : p.rawBytes;
function matrix(p, li, h) {
  const q = comp(p), bytes = bytesOf(p), n = p.tokens.length;
  const scale = q.scale[li][h], off = (li * D.heads + h) * n * n;
  return (i, j) => { const b = bytes[off + i * n + j];
    return q.signed ? (b / 127.5 - 1) * scale : b / 255 * scale; };
}
// the colour scale of a panel at (li, h): [vmax, note]; signed panels are symmetric around 0
function scaleOf(p, li, h) {
  const own = comp(p).scale[li][h];
  if (p.kind === "difference") return [own, "own symmetric scale, centred on 0"];
  const compared = D.panels.filter((o) => o.kind !== "difference");
  if (state.scale === "panel" || compared.length < 2) return [own, compared.length < 2 ?
    "0 to this head's maximum" : "PER-PANEL scale: this panel's own maximum"];
  return [Math.max(...compared.map((o) => comp(o).scale[li][h])),
          "shared scale: " + compared.map((o) => o.name).join(" and ") + ", 0 to the larger maximum"];
}
function index(v, vmax, signed) {
  const u = signed ? (v / (vmax || 1) + 1) / 2 : v / (vmax || 1);
  return Math.max(0, Math.min(255, Math.round(u * 255)));
}
function rgb(v, vmax, signed) {
  const t = signed ? DIV : SEQ, k = 3 * index(v, vmax, signed);
  return [t[k], t[k + 1], t[k + 2]];
}
function paint(cv, n, m, vmax, signed) {
  cv.width = n; cv.height = n;
  const ctx = cv.getContext("2d"), img = ctx.createImageData(n, n), t = signed ? DIV : SEQ;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    const k = 3 * index(m(i, j), vmax, signed), o = 4 * (i * n + j);
    img.data[o] = t[k]; img.data[o + 1] = t[k + 1]; img.data[o + 2] = t[k + 2]; img.data[o + 3] = 255; }
  ctx.putImageData(img, 0, 0);
}
const fmt = (v) => (Math.abs(v) < 1e-12 ? 0 : v).toPrecision(4);
const tick = (v) => { const a = Math.abs(v); return a === 0 ? "0" : a >= 0.01 ? String(+v.toFixed(3)) : v.toPrecision(2); };
function el(tag, cls, text) {
  const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e;
}
function cellSize() {
  if (state.zoom !== "auto") return +state.zoom;
  const n = Math.max(...D.panels.map((p) => p.tokens.length));
  return Math.max(10, Math.min(28, Math.floor(480 / n)));
}
function build() {
  const layer = document.getElementById("layer"), head = document.getElementById("head");
  D.layers.forEach((l, i) => layer.add(new Option(String(l), String(i))));
  for (let h = 0; h < D.heads; h++) head.add(new Option(String(h), String(h)));
  layer.onchange = () => { state.layer = +layer.value; render(); };
  head.onchange = () => { state.head = +head.value; render(); };
  for (const id of ["mode-raw", "mode-vw"]) document.getElementById(id).onchange = (e) => {
    state.mode = e.target.value; render(true); };
  if (!D.has_vw) document.getElementById("mode-vw").disabled = true;
  document.getElementById("scale").onchange = (e) => { state.scale = e.target.value; render(true); };
  document.getElementById("zoom").onchange = (e) => { state.zoom = e.target.value; render(); };
  const ov = document.getElementById("overview-of");
  D.panels.forEach((p, k) => ov.add(new Option(p.name, String(k))));
  ov.onchange = () => { state.overview = +ov.value; render(true); };
  const thumbs = document.getElementById("thumbs");
  thumbs.style.gridTemplateColumns = `auto repeat(${D.heads}, auto)`;
  thumbs.appendChild(el("div", "lab", "layer \\\\ head"));
  for (let h = 0; h < D.heads; h++) thumbs.appendChild(el("div", "lab", String(h)));
  D.layers.forEach((l, li) => {
    thumbs.appendChild(el("div", "lab", String(l)));
    for (let h = 0; h < D.heads; h++) {
      const c = el("canvas", "thumb"); c.dataset.layer = String(l); c.dataset.head = String(h);
      c.title = `layer ${l}, head ${h}`;
      c.onclick = () => { state.layer = li; state.head = h; layer.value = String(li);
        head.value = String(h); render(); };
      thumbs.appendChild(c);
    }
  });
  const root = document.getElementById("panels");
  for (const p of D.panels) {
    const div = el("div", "panel"); div.dataset.panel = p.name;
    div.appendChild(el("h3", "", p.kind === "difference" ?
      `difference: counterfactual \\u2212 original, on the ${p.tokens.length} aligned tokens` : p.name));
    if (p.kind === "difference") div.appendChild(el("div", "note", p.left_out.length ?
      "left out (no partner on the other side): " + p.left_out.join(", ") : "every token has a partner"));
    for (const cls of ["row", "col"]) {
      div.appendChild(el("div", "strip-label", cls === "row" ? "attends to" : "attended by"));
      const strip = el("div", "tokens " + cls);
      p.tokens.forEach((t, i) => { const s = el("span", "tok", t); s.dataset.i = String(i);
        s.onmouseenter = () => { state.hover = { panel: p.name, i }; renderHover(); };
        strip.appendChild(s); });
      div.appendChild(strip);
    }
    const scroll = el("div", "scroll"), mat = el("div", "matrix");
    const corner = el("div", "corner", "query \\u2193  key \\u2192"), kl = el("div", "klabels"), ql = el("div", "qlabels");
    p.tokens.forEach((t, i) => { const a = el("div", "klabel", t), b = el("div", "qlabel", t);
      a.dataset.i = String(i); b.dataset.i = String(i); a.title = t; b.title = t; kl.appendChild(a); ql.appendChild(b); });
    const cv = el("canvas", "heat");
    cv.onmousemove = (e) => hoverCell(p, cv, e);
    cv.onmouseleave = () => { document.getElementById("tooltip").hidden = true; highlight(p, -1, -1); };
    const top = el("div", "toprow"), body = el("div", "mbody");
    top.append(corner, kl); body.append(ql, cv); mat.append(top, body); scroll.appendChild(mat); div.appendChild(scroll);
    const cb = el("div", "colorbar"), bar = el("canvas"), ticks = el("div", "cb-ticks");
    bar.width = 256; bar.height = 1;
    for (let k = 0; k < 5; k++) { const s = el("span", "cb-tick"); s.style.left = `${k * 25}%`; ticks.appendChild(s); }
    cb.append(bar, ticks, el("div", "cb-label")); div.appendChild(cb);
    p.el = div; root.appendChild(div);
  }
}
function highlight(p, i, j) {
  p.el.querySelectorAll(".qlabel").forEach((s) => s.classList.toggle("hl", +s.dataset.i === i));
  p.el.querySelectorAll(".klabel").forEach((s) => s.classList.toggle("hl", +s.dataset.i === j));
}
function hoverCell(p, cv, e) {
  const r = cv.getBoundingClientRect(), n = p.tokens.length;
  const j = Math.floor((e.clientX - r.left) / r.width * n), i = Math.floor((e.clientY - r.top) / r.height * n);
  const tip = document.getElementById("tooltip");
  if (i < 0 || j < 0 || i >= n || j >= n) { tip.hidden = true; return; }
  const v = matrix(p, state.layer, state.head)(i, j), q = comp(p), scale = q.scale[state.layer][state.head];
  const where = (k) => p.kind === "difference" ?
    `#${k}; #${p.index_original[k]} in the original, #${p.index_counterfactual[k]} in the counterfactual` : `#${k}`;
  tip.querySelector(".tt-value").textContent = `${q.signed && v > 0 ? "+" : ""}${fmt(v)}  (\\u00b1${tick(scale / 255)}, 8-bit)`;
  tip.querySelector(".tt-q").textContent = `query: '${p.tokens[i]}' (${where(i)})`;
  tip.querySelector(".tt-k").textContent = `key: '${p.tokens[j]}' (${where(j)})`;
  tip.querySelector(".tt-where").textContent = `${p.name}, layer ${D.layers[state.layer]}, head ${state.head}, ` +
    (vwOn() ? "value-weighted" : "attention");
  Object.assign(tip.dataset, { panel: p.name, i: String(i), j: String(j), value: String(v), step: String(scale / 255) });
  tip.hidden = false;
  tip.style.left = `${Math.min(e.clientX + 14, window.innerWidth - 300)}px`; tip.style.top = `${e.clientY + 14}px`;
  highlight(p, i, j);
}
function renderOverview() {
  const p = D.panels[state.overview], signed = p.kind === "difference";
  const all = Math.max(...comp(p).scale.flat());
  document.querySelectorAll("canvas.thumb").forEach((c, k) => {
    const li = Math.floor(k / D.heads), h = k % D.heads, own = comp(p).scale[li][h];
    paint(c, p.tokens.length, matrix(p, li, h), state.scale === "panel" ? own : all, signed);
    c.classList.toggle("current", li === state.layer && h === state.head);
  });
  document.getElementById("overview-note").textContent = `${p.name}, ${vwOn() ? "value-weighted" : "attention"}: ` +
    (state.scale === "panel" ? "PER-THUMBNAIL scale: each head from 0 to its own maximum" :
     `one scale for every thumbnail, ${signed ? "\\u00b1" + tick(all) + " centred on 0" : "0 to " + tick(all)} ` +
     "(the largest value of any layer and head)");
}
function renderHover() {
  const lines = [];
  for (const p of D.panels) {
    const m = matrix(p, state.layer, state.head), n = p.tokens.length, [vmax] = scaleOf(p, state.layer, state.head);
    const signed = p.kind === "difference", hv = state.hover && state.hover.panel === p.name ? state.hover.i : null;
    for (const cls of ["row", "col"]) {
      p.el.querySelectorAll(".tokens." + cls + " .tok").forEach((s) => {
        const j = +s.dataset.i; s.classList.toggle("hovered", j === hv);
        if (hv === null) { s.style.background = ""; s.style.color = ""; return; }
        const [r, g, b] = rgb(cls === "row" ? m(hv, j) : m(j, hv), vmax, signed);
        s.style.background = `rgb(${r},${g},${b})`; s.style.color = 0.3 * r + 0.59 * g + 0.11 * b < 140 ? "#fff" : "#000";
      });
    }
    if (hv !== null) {
      const size = signed ? Math.abs : (x) => x;
      let best = 0, bestIn = 0;
      for (let j = 0; j < n; j++) { if (size(m(hv, j)) > size(m(hv, best))) best = j;
        if (size(m(j, hv)) > size(m(bestIn, hv))) bestIn = j; }
      const f = (v) => (signed && v > 0 ? "+" : "") + v.toFixed(3);
      lines.push(`${p.name}: '${p.tokens[hv]}' (#${hv}) ${signed ? "changes most towards" : "attends most to"} ` +
        `'${p.tokens[best]}' (#${best}, ${f(m(hv, best))}); ${signed ? "change largest from" : "most attended by"} ` +
        `'${p.tokens[bestIn]}' (#${bestIn}, ${f(m(bestIn, hv))})`);
    }
  }
  const mode = vwOn() ? "value-weighted" : "attention";
  document.getElementById("status").textContent =
    `layer ${D.layers[state.layer]}, head ${state.head}, ${mode}` + (lines.length ? " | " + lines.join(" | ") : "");
}
function render(overview) {
  const cell = cellSize(), font = Math.max(6, Math.min(12, cell - 2));
  for (const p of D.panels) {
    const n = p.tokens.length, signed = p.kind === "difference", [vmax, note] = scaleOf(p, state.layer, state.head);
    const lw = Math.max(36, Math.min(120, Math.max(...p.tokens.map((t) => t.length)) * font * 0.62 + 8));
    const mat = p.el.querySelector(".matrix");
    mat.style.width = `${lw + n * cell}px`;
    const corner = p.el.querySelector(".corner"), kl = p.el.querySelector(".klabels");
    corner.style.width = corner.style.height = kl.style.height = `${lw}px`; kl.style.width = `${n * cell}px`;
    p.el.querySelectorAll(".klabel").forEach((s) => { s.style.width = `${cell}px`; s.style.maxHeight = `${lw}px`;
      s.style.fontSize = `${font}px`; s.style.lineHeight = `${cell}px`; });
    p.el.querySelectorAll(".qlabel").forEach((s) => { s.style.height = `${cell}px`; s.style.fontSize = `${font}px`;
      s.style.lineHeight = `${cell}px`; s.style.width = `${lw}px`; });
    const cv = p.el.querySelector("canvas.heat");
    paint(cv, n, matrix(p, state.layer, state.head), vmax, signed);
    cv.style.width = `${n * cell}px`; cv.style.height = `${n * cell}px`;
    const bar = p.el.querySelector(".colorbar canvas"), ctx = bar.getContext("2d"), t = signed ? DIV : SEQ;
    for (let k = 0; k < 256; k++) { ctx.fillStyle = `rgb(${t[3 * k]},${t[3 * k + 1]},${t[3 * k + 2]})`; ctx.fillRect(k, 0, 1, 1); }
    p.el.querySelectorAll(".cb-tick").forEach((s, k) => {
      s.textContent = tick(signed ? vmax * (k / 2 - 1) : vmax * k / 4); });
    const unit = vwOn() ? "value-weighted ||\\u03b1 f(x)||" : "attention weight";
    p.el.querySelector(".cb-label").textContent = signed ?
      `${unit}, counterfactual \\u2212 original: ${note}, \\u00b1${tick(vmax)}` : `${unit}: ${note} (${tick(vmax)})`;
    p.el.dataset.vmax = String(vmax); p.el.dataset.scale = signed ? "symmetric" : state.scale;
  }
  if (overview !== false) renderOverview();
  renderHover();
  document.body.dataset.layer = D.layers[state.layer]; document.body.dataset.head = state.head;
  document.body.dataset.mode = state.mode; document.body.dataset.ready = "1";
}
build(); render(true);
</script></body></html>
"""
