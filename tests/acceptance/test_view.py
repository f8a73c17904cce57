"""The interactive HTML view, in a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from probe import AttentionProbe
from probe.view import build_view
from browser import _console_errors, _hover, _hover_cell, _open, _select, _shown_value, _ticks, browser  # noqa: F401


@pytest.mark.slow
def test_pair_view_select_hover_switch(browser, minilm, tmp_path):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        orig, cf = p.run(["The robin is a bird.", "The robin is not a bird."])
    _open(browser, tmp_path, build_view(orig, cf))
    panels = [e.get_attribute("data-panel") for e in browser.find_elements("css selector", ".panel")]
    assert panels == ["original", "counterfactual", "difference"]
    _select(browser, "layer", "5")
    _select(browser, "head", "9")
    status = _hover(browser, "counterfactual", 4)
    row = cf["blocks.5.attn.pattern"][9][4]
    best = int(np.argmax(row))
    assert f"'not' (#4) attends most to '{cf.tokens[best]}' (#{best}, {row[best]:.2f}" in status
    assert browser.find_element("css selector", "body").get_attribute("data-head") == "9"
    hovered = browser.find_elements("css selector", ".panel[data-panel=counterfactual] .tok.hovered")
    assert [h.text for h in hovered] == ["not", "not"]

    # token labels on both axes of every map
    for name, tokens in (("original", orig.tokens), ("counterfactual", cf.tokens)):
        for axis in ("qlabel", "klabel"):
            shown = browser.execute_script(
                f"return [...document.querySelectorAll('.panel[data-panel={name}] .{axis}')].map(e => e.textContent)")
            assert shown == tokens

    # one colour scale for original and counterfactual: the larger maximum of the two at this head
    p0, p1 = orig["blocks.5.attn.pattern"][9], cf["blocks.5.attn.pattern"][9]
    vmax = {e.get_attribute("data-panel"): float(e.get_attribute("data-vmax"))
            for e in browser.find_elements("css selector", ".panel")}
    assert vmax["original"] == vmax["counterfactual"] == pytest.approx(max(p0.max(), p1.max()), abs=1e-5)
    ticks = _ticks(browser, "original")
    assert len(ticks) == 5 and float(ticks[0]) == 0 and float(ticks[-1]) == pytest.approx(vmax["original"], abs=1e-3)
    assert _ticks(browser, "counterfactual") == ticks
    label = browser.find_element("css selector", ".panel[data-panel=original] .cb-label").text
    assert "shared scale" in label
    # the difference: its own symmetric scale, centred on 0, on the aligned tokens ('not' left out)
    keep = [i for i in range(len(cf.tokens)) if i != 4]
    diff = p1[np.ix_(keep, keep)] - p0
    assert vmax["difference"] == pytest.approx(np.abs(diff).max(), abs=1e-5)
    dticks = [float(t) for t in _ticks(browser, "difference")]
    assert dticks[2] == 0 and dticks[0] == -dticks[4] == pytest.approx(-vmax["difference"], abs=1e-3)
    assert "centred on 0" in browser.find_element("css selector", ".panel[data-panel=difference] .cb-label").text
    assert "not (#4, counterfactual)" in browser.find_element("css selector", ".panel[data-panel=difference] .note").text

    # the tooltip: the exact (dequantised) value, within 1/255 of the panel's scale, and the tokens
    for panel, matrix, tokens, (i, j) in (("counterfactual", p1, cf.tokens, (4, 0)),
                                          ("counterfactual", p1, cf.tokens, (2, 5)),
                                          ("original", p0, orig.tokens, (3, 3)),
                                          ("difference", diff, [cf.tokens[k] for k in keep], (4, 1))):
        text, data = _hover_cell(browser, panel, i, j)
        assert (data["panel"], int(data["i"]), int(data["j"])) == (panel, i, j)
        scale = np.abs(matrix).max()
        assert abs(float(data["value"]) - matrix[i, j]) <= scale / 255 + 1e-6
        assert abs(_shown_value(text) - matrix[i, j]) <= scale / 255 + 1e-6
        assert f"query: '{tokens[i]}'" in text and f"key: '{tokens[j]}'" in text
        assert f"{panel}, layer 5, head 9, attention" in text
    assert "8 bits per cell" in browser.find_element("id", "footnote").text

    # a per-panel scale only when chosen, and then labelled
    _select(browser, "scale", "per panel (each its own maximum)")
    vmax = {e.get_attribute("data-panel"): float(e.get_attribute("data-vmax"))
            for e in browser.find_elements("css selector", ".panel")}
    assert vmax["original"] == pytest.approx(p0.max(), abs=1e-5)
    assert vmax["counterfactual"] == pytest.approx(p1.max(), abs=1e-5)
    assert "PER-PANEL" in browser.find_element("css selector", ".panel[data-panel=original] .cb-label").text
    _select(browser, "scale", "shared by the compared panels")

    browser.find_element("id", "mode-vw").click()
    status_vw = browser.find_element("id", "status").text
    assert status_vw.startswith("layer 5, head 9, value-weighted")
    vw_row = cf["blocks.5.attn.value_weighted"][9][4]
    assert f"attends most to '{cf.tokens[int(np.argmax(vw_row))]}'" in status_vw
    text, _ = _hover_cell(browser, "counterfactual", 4, 0)
    vw = cf["blocks.5.attn.value_weighted"][9]
    assert abs(_shown_value(text) - vw[4, 0]) <= vw.max() / 255 + 1e-6
    assert _console_errors(browser) == []
    shot = tmp_path / "pair.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_overview_opens_the_clicked_head(browser, minilm, tmp_path):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        ex = p.run(["Dogs bark at night."])[0]
    _open(browser, tmp_path, build_view(ex))
    thumbs = browser.find_elements("css selector", "canvas.thumb")
    assert len(thumbs) == 6 * 12
    assert [(t.get_attribute("data-layer"), t.get_attribute("data-head")) for t in thumbs[:13]] == \
        [("0", str(h)) for h in range(12)] + [("1", "0")]
    target = next(t for t in thumbs if (t.get_attribute("data-layer"), t.get_attribute("data-head")) == ("3", "7"))
    target.click()
    body = browser.find_element("css selector", "body")
    assert (body.get_attribute("data-layer"), body.get_attribute("data-head")) == ("3", "7")
    assert browser.find_element("id", "layer").get_attribute("value") == "3"
    assert browser.find_element("id", "head").get_attribute("value") == "7"
    assert "current" in target.get_attribute("class")
    text, data = _hover_cell(browser, "example", 1, 0)
    pattern = ex["blocks.3.attn.pattern"][7]
    assert abs(float(data["value"]) - pattern[1, 0]) <= pattern.max() / 255 + 1e-6
    assert "example, layer 3, head 7" in text
    assert _console_errors(browser) == []


@pytest.mark.slow
def test_hostile_tokens_are_text_and_run_nothing(browser, tmp_path):
    from probe.captures import Example

    tokens = ["[CLS]", "<script>window.__pwned=1</script>", '"><img src=x onerror="window.__pwned=2">',
              "&lt;b&gt;", "[SEP]"]
    n = len(tokens)
    pattern = np.random.default_rng(1).random((2, n, n))
    pattern /= pattern.sum(-1, keepdims=True)
    ex = Example(tokens, ["blocks.0.attn.pattern"], lambda k: pattern, text=" ".join(tokens))
    _open(browser, tmp_path, build_view(ex))
    for axis in ("qlabel", "klabel", "tok"):
        shown = browser.execute_script(
            f"return [...document.querySelectorAll('.panel .{axis}')].map(e => e.textContent)")
        assert shown[:n] == tokens
    assert not browser.find_elements("css selector", "img")
    assert not browser.find_elements("css selector", "b")
    assert browser.execute_script("return window.__pwned") is None
    text, _ = _hover_cell(browser, "example", 1, 2)
    assert f"query: '{tokens[1]}'" in text and f"key: '{tokens[2]}'" in text
    assert browser.execute_script("return window.__pwned") is None
    assert _console_errors(browser) == []


@pytest.mark.slow
def test_long_sentence_view(browser, minilm, tmp_path):
    model, tokenizer = minilm
    text = " ".join(f"word{i % 17} and" for i in range(70)) + "."
    with AttentionProbe(model, tokenizer, keys=["pattern"], layers=[0, 3]) as p:
        ex = p.run([text])[0]
    n = len(ex.tokens)
    assert n >= 200
    _open(browser, tmp_path, build_view(ex))
    assert browser.find_element("id", "mode-vw").get_attribute("disabled") == "true"
    _select(browser, "layer", "3")
    status = _hover(browser, "example", 100, strip="col")
    pattern = ex["blocks.3.attn.pattern"][0]
    col = pattern[:, 100]
    # the page stores 8 bits per cell, scaled to the head's maximum: one step of quantisation
    step = pattern.max() / 255
    match = re.search(r"most attended by '(.+?)' \(#(\d+), ([0-9.]+)\)", status)
    j, shown = int(match.group(2)), float(match.group(3))
    assert match.group(1) == ex.tokens[j]
    assert abs(shown - col[j]) <= step and col.max() - col[j] <= step
    # cells of at least 4 CSS px (10 by default), in a box that scrolls
    width, scroll_w, client_w = browser.execute_script("""
        const c = document.querySelector('canvas.heat'), s = document.querySelector('.scroll');
        return [c.getBoundingClientRect().width, s.scrollWidth, s.clientWidth];""")
    assert width / n >= 4 and scroll_w > client_w
    text, data = _hover_cell(browser, "example", 180, 150)
    assert (int(data["i"]), int(data["j"])) == (180, 150)
    assert abs(_shown_value(text) - pattern[180, 150]) <= step + 1e-6
    assert f"query: '{ex.tokens[180]}' (#180)" in text
    shot = tmp_path / "long.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    _select(browser, "zoom", "4")
    width = browser.execute_script("return document.querySelector('canvas.heat').getBoundingClientRect().width")
    assert width == pytest.approx(4 * n)
    assert _console_errors(browser) == []


def test_cli_view_finds_the_pair_partner(tmp_path, minilm):
    from probe.cli import main
    from probe.design import plan_pairs
    from probe.pairs import Pair
    from probe.study import capture_pairs

    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        capture_pairs(p, plan_pairs([Pair("a", "It is hot.", "It is not hot.")]), tmp_path / "r.h5").close()
    assert main(["view", str(tmp_path / "r.h5"), "--example", "1", "--out", str(tmp_path / "v.html")]) == 0
    page = (tmp_path / "v.html").read_text()
    assert '"name": "difference"' in page and "It is hot. / It is not hot." in page
    assert main(["view", str(tmp_path / "r.h5"), "--example", "9", "--out", str(tmp_path / "x.html")]) == 2
