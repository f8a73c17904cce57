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
  thumbs.appendChild(el("div", "lab", "layer \\ head"));
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
      `difference: counterfactual \u2212 original, on the ${p.tokens.length} aligned tokens` : p.name));
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
    const corner = el("div", "corner", "query \u2193  key \u2192"), kl = el("div", "klabels"), ql = el("div", "qlabels");
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
  tip.querySelector(".tt-value").textContent = `${q.signed && v > 0 ? "+" : ""}${fmt(v)}  (\u00b1${tick(scale / 255)}, 8-bit)`;
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
     `one scale for every thumbnail, ${signed ? "\u00b1" + tick(all) + " centred on 0" : "0 to " + tick(all)} ` +
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
    const unit = vwOn() ? "value-weighted ||\u03b1 f(x)||" : "attention weight";
    p.el.querySelector(".cb-label").textContent = signed ?
      `${unit}, counterfactual \u2212 original: ${note}, \u00b1${tick(vmax)}` : `${unit}: ${note} (${tick(vmax)})`;
    p.el.dataset.vmax = String(vmax); p.el.dataset.scale = signed ? "symmetric" : state.scale;
  }
  if (overview !== false) renderOverview();
  renderHover();
  document.body.dataset.layer = D.layers[state.layer]; document.body.dataset.head = state.head;
  document.body.dataset.mode = state.mode; document.body.dataset.ready = "1";
}
build(); render(true);
