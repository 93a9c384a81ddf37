"""The dashboard in a real headless browser (Debian's chromium + chromedriver, via Selenium).

The real service trains three tiny models (one CPU worker) while the page is open; the test
reads what the page shows and checks it against the JSON API and independent references:
the budget numbers, one row per experiment with its status (and none of another user's), one
curve per experiment holding exactly its validation losses, the IsoFLOP points at
N = `count_parameters(..., embeddings=False)` grouped by C = 6·N·D, and that the page moved
from queued to completed by polling, without a reload. Skipped when selenium, chromium or
chromedriver is missing (CI: ``apt-get install -y chromium chromium-driver``).

``LMFORGE_DOCS_SCREENSHOT=1`` also writes the screenshot to docs/img/scaling-dashboard.png.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.scaling.test_cli_client import SEQ_LEN, VOCAB, running_service, tiny_config

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install selenium)")

REPO = Path(__file__).resolve().parents[2]


def _find(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def browser():
    chrome = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chrome is None or driver is None:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install -y chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1000"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield d
    finally:
        d.quit()


def wait_for(condition, timeout: float = 120, poll: float = 0.25):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        assert time.monotonic() < deadline, "the dashboard did not show it in time"
        time.sleep(poll)


# Everything the page shows, read in one script: the page redraws every 2 s, so elements
# found one call earlier may be gone (stale) by the next.
SNAPSHOT = """
const all = sel => Array.from(document.querySelectorAll(sel));
const text = id => document.getElementById(id).textContent;
return {
  rows: Object.fromEntries(all("#experiments tbody tr").map(
      r => [r.dataset.id, r.dataset.status])),
  curves: Object.fromEntries(all("g.curve").map(g => [g.dataset.id, g.dataset.losses])),
  points: Object.fromEntries(all("circle.iso-point").map(c => [c.dataset.id,
      [+c.dataset.params, +c.dataset.compute, +c.dataset.loss]])),
  series: all("g.iso-series").map(g => +g.dataset.count),
  budget: {used: text("budget-used"), remaining: text("budget-remaining"),
           total: text("budget-total")},
  polls: window.dashboardState.polls,
};
"""


def snapshot(browser) -> dict:
    return browser.execute_script(SNAPSHOT)


def rows(browser) -> dict[str, str]:
    """{experiment id: status} of the queue table."""
    return snapshot(browser)["rows"]


def n_params(config: dict) -> int:
    from lmforge.model.accounting import count_parameters
    from lmforge.model.config import ModelConfig

    a = config["architecture_config"]
    return count_parameters(ModelConfig(
        vocab_size=VOCAB, context_length=SEQ_LEN, d_model=a["hidden_size"],
        num_layers=a["num_hidden_layers"], num_heads=a["num_attention_heads"],
        d_ff=a["intermediate_size"]), embeddings=False)


def test_dashboard_shows_budget_queue_curves_and_isoflops(browser, tmp_path):
    from lmforge.scaling.client import ServiceClient

    # two sizes at ~the same compute (C = 6·N·D within 3%), and one at twice it
    configs = [tiny_config(hidden=32, steps=8, max_runtime=100),
               tiny_config(hidden=16, steps=28, max_runtime=100),
               tiny_config(hidden=32, steps=16, max_runtime=100)]
    with running_service(tmp_path / "svc", {"alice": 1000.0, "bob": 100.0}) as (url, keys), \
            ServiceClient(url, keys["alice"]) as alice:
        with ServiceClient(url, keys["bob"]) as bob:
            other = bob.submit(tiny_config(hidden=16, steps=4, max_runtime=50))["experiment_id"]
        ids = [alice.submit(c)["experiment_id"] for c in configs]

        # the key from ?key= is kept in localStorage and dropped from the address bar
        browser.get(f"{url}/dashboard?key={keys['alice']}")
        first = wait_for(lambda: (r := rows(browser)) and set(r) == set(ids) and r)
        assert set(first.values()) != {"completed"}  # one worker: the last ones still queued
        assert "key=" not in browser.current_url
        assert other not in rows(browser)
        browser.execute_script("window.__samePage = true;")
        polls = snapshot(browser)["polls"]

        done = [alice.wait(i, poll_s=0.25, timeout_s=240) for i in ids]
        assert [e["status"] for e in done] == ["completed"] * 3
        wait_for(lambda: set(rows(browser).values()) == {"completed"}, timeout=30)
        assert browser.execute_script("return window.__samePage === true")  # not reloaded
        budget = alice.budget()
        time.sleep(2.5)  # one more poll after the last charge
        page = snapshot(browser)
        assert page["polls"] > polls

        assert {k: float(v) for k, v in page["budget"].items()} == pytest.approx(
            {"used": round(budget["used_seconds"], 1),
             "remaining": round(budget["remaining_seconds"], 1), "total": 1000.0})
        assert budget["used_seconds"] == pytest.approx(
            sum(e["used_runtime_seconds"] for e in done))

        for exp, config in zip(done, configs, strict=True):
            eid = exp["experiment_id"]
            assert json.loads(page["curves"][eid]) == exp["val_losses"]
            assert len(exp["val_losses"]) == config["n_evals"]
            assert exp["val_losses"][-1] < exp["val_losses"][0]
            n = n_params(config)
            params, compute, loss = page["points"][eid]
            assert params == n and loss == exp["val_losses"][-1]
            assert compute == pytest.approx(6 * n * config["total_train_tokens"])
        assert sorted(page["series"]) == [1, 2]

        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
        if os.environ.get("LMFORGE_DOCS_SCREENSHOT"):
            _save_small(shot, REPO / "docs" / "img" / "scaling-dashboard.png")

        # the key is remembered: a plain /dashboard shows the same data
        browser.get(f"{url}/dashboard")
        wait_for(lambda: set(rows(browser)) == set(ids), timeout=30)
        # a wrong key: the key form and the server's refusal, no data
        browser.execute_script("localStorage.clear();")
        browser.get(f"{url}/dashboard?key=nobody.wrong")
        wait_for(lambda: browser.find_element("id", "message").text, timeout=30)
        assert "wrong or missing API key" in browser.find_element("id", "message").text
        assert browser.find_element("id", "login").is_displayed()
        assert not browser.find_element("id", "main").is_displayed()
        assert browser.execute_script("return localStorage.length") == 0  # wrong key dropped
        # typing the right key into the form shows the data
        browser.find_element("id", "key-input").send_keys(keys["alice"])
        browser.find_element("id", "key-save").click()
        wait_for(lambda: set(rows(browser)) == set(ids), timeout=30)
        assert browser.find_element("id", "main").is_displayed()


def _save_small(png: Path, dest: Path) -> None:
    """A palette PNG (128 colours) of the screenshot: a few tens of KB for the docs."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(png).convert("RGB").quantize(colors=128).save(dest, optimize=True)
