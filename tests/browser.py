"""The headless Chromium that browser tests drive (Debian's chromium and chromium-driver,
through selenium), and helpers to open a page and hover, select and read it."""

from __future__ import annotations

import os
import re
import shutil

import pytest

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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    # a collector installed before any page script: uncaught errors and console.error calls
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        window.__errors = [];
        window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
        const _err = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); _err(...a); };
    """})
    yield driver
    driver.quit()


def _open(browser, tmp_path, page):
    path = tmp_path / "view.html"
    path.write_text(page, encoding="utf-8")
    assert "http" not in re.sub(r"<script id=\"probe-data\".*?</script>", "", page, flags=re.S)
    browser.get(path.as_uri())
    assert browser.find_element("css selector", "body").get_attribute("data-ready") == "1"
    assert _console_errors(browser) == []


def _console_errors(browser):
    """Errors the page raised: the browser log where the driver offers it, and the collector."""
    try:
        logged = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    except Exception:  # a driver without the log endpoint: the collector alone
        logged = []
    return logged + browser.execute_script("return window.__errors")


def _hover_cell(browser, panel, i, j):
    """Move the real pointer over cell (query i, key j) of a panel's map (scrolled into view
    first); returns the tooltip's text and its data attributes."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    x, y = browser.execute_script("""
        const [name, i, j] = arguments, p = document.querySelector(`.panel[data-panel="${name}"]`);
        const cv = p.querySelector("canvas.heat"), box = p.querySelector(".scroll");
        const n = p.querySelectorAll(".qlabel").length, cell = cv.getBoundingClientRect().width / n;
        box.scrollLeft = Math.max(0, (j - 3) * cell); box.scrollTop = Math.max(0, (i - 3) * cell);
        box.scrollIntoView({block: "start"});
        const r = cv.getBoundingClientRect();
        return [r.left + (j + 0.5) * cell, r.top + (i + 0.5) * cell];""", panel, i, j)
    action = ActionBuilder(browser)
    action.pointer_action.move_to_location(int(x), int(y))
    action.perform()
    ActionChains(browser).perform()
    tip = browser.find_element("id", "tooltip")
    assert tip.is_displayed()
    data = {k: tip.get_attribute(f"data-{k}") for k in ("panel", "i", "j", "value", "step")}
    return tip.text, data


def _hover(browser, panel, index, strip="row"):
    from selenium.webdriver.common.action_chains import ActionChains

    tokens = browser.find_elements("css selector", f'.panel[data-panel="{panel}"] .tokens.{strip} .tok')
    ActionChains(browser).move_to_element(tokens[index]).perform()
    return browser.find_element("id", "status").text


def _select(browser, element_id, text):
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", element_id)).select_by_visible_text(text)


def _shown_value(text):
    return float(re.match(r"([+-]?[0-9.e-]+) \(±", text).group(1))


def _ticks(browser, panel):
    return [t.text for t in browser.find_elements("css selector", f'.panel[data-panel="{panel}"] .cb-tick')]
