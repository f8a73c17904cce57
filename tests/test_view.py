"""The interactive HTML view, in a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from probe import AttentionProbe
from probe.view import build_view

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium and chromium-driver (see README's test command)")
        pytest.skip("no chromium/chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1600,1200"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _open(browser, tmp_path, page):
    path = tmp_path / "view.html"
    path.write_text(page, encoding="utf-8")
    assert "http" not in re.sub(r"<script id=\"probe-data\".*?</script>", "", page, flags=re.S)
    browser.get(path.as_uri())
    assert browser.find_element("css selector", "body").get_attribute("data-ready") == "1"


def _hover(browser, panel, index, strip="row"):
    from selenium.webdriver.common.action_chains import ActionChains

    tokens = browser.find_elements("css selector", f'.panel[data-panel="{panel}"] .tokens.{strip} .tok')
    ActionChains(browser).move_to_element(tokens[index]).perform()
    return browser.find_element("id", "status").text


def _select(browser, element_id, text):
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", element_id)).select_by_visible_text(text)


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
    browser.find_element("id", "mode-vw").click()
    status_vw = browser.find_element("id", "status").text
    assert status_vw.startswith("layer 5, head 9, value-weighted")
    vw_row = cf["blocks.5.attn.value_weighted"][9][4]
    assert f"attends most to '{cf.tokens[int(np.argmax(vw_row))]}'" in status_vw
    shot = tmp_path / "pair.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_long_sentence_view(browser, minilm, tmp_path):
    model, tokenizer = minilm
    text = " ".join(f"word{i % 17} and" for i in range(70)) + "."
    with AttentionProbe(model, tokenizer, keys=["pattern"], layers=[0, 3]) as p:
        ex = p.run([text])[0]
    assert len(ex.tokens) >= 128
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
    size = browser.execute_script("const c = document.querySelector('canvas'); return [c.width, c.height];")
    assert size[0] == size[1] >= len(ex.tokens) * 3
    shot = tmp_path / "long.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


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
