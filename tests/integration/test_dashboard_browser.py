"""The dashboard in a real browser (headless Chromium) against a tiny process ring behind `flowring serve`
with an API key: the key guards the page as it guards the API; the page shows every service, sees one
stopped (unhealthy) and one killed and restarted (new pid), and a chat answer streams into it, equal to the
API's own answer. The test saves the screenshot docs/img/dashboard.png. Skipped (with the reason) without
Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from common.cluster.settings import Timeouts
from common.speculation.modes import DraftSettings
from services.launcher import client_for, free_ports, plan_local, start, stop
from tests.support.browser import chromium, unavailable
from tests.support.tiny_models import make_tiny_pair

REPO = Path(__file__).resolve().parents[2]
# FLOWRING_DOC_ARTIFACTS=1 refreshes the README's picture; otherwise the screenshot goes to the test's own folder,
# so a test run leaves the checkout as it was.
SCREENSHOT = REPO / "docs" / "img" / "dashboard.png"
TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)
KEY = "dashboard-test-key"
SERVICES = {"scheduler", "drafter", "stage-1", "stage-2", "verifier"}
WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"browser: {WHY_NOT}")
# Records every text the newest answer showed (each textContent assignment adds a text node) with its time.
WATCH_ANSWERS = """
window.__shown = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes)
    if (n.nodeType === 3 && n.parentElement && n.parentElement.classList.contains('text')
        && n.parentElement.parentElement.classList.contains('assistant'))
      window.__shown.push([performance.now(), n.data.length]);
}).observe(document.getElementById('conversation'), {childList: true, subtree: true});
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    base, draft = make_tiny_pair(root, family="llama", seed=4)
    spec = plan_local(base, draft, 2, draft_settings=TREES, threads=1, timeouts=Timeouts(poll_interval_s=0.2))
    run_dir = root / "run"
    start(spec, run_dir)
    (port,) = free_ports("127.0.0.1", 1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--port", str(port),
                               "--model-name", "tiny", "--api-key", KEY, "--run-dir", str(run_dir)], env=env)
    try:
        _wait_for(port)
        yield spec, port
    finally:
        server.terminate()
        server.wait(10)
        stop(run_dir)


def _request(port: int, method: str, path: str, headers: dict | None = None,
             body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _request(port, "GET", "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200:
                return
        except OSError:  # not listening yet
            time.sleep(0.2)
    raise AssertionError("flowring serve did not start")


def _until(what: str, check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"the page did not show {what} within {timeout_s:g} s")


def test_the_api_key_guards_the_page_as_it_guards_the_api(served):
    _, port = served
    status, _, page = _request(port, "GET", "/")
    assert status == 401 and b'name="key"' in page and b"flowring dashboard" not in page  # the key form only
    status, _, body = _request(port, "GET", "/dashboard/state")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert _request(port, "GET", "/dashboard/static/app.js")[0] == 401
    assert _request(port, "GET", "/dashboard/static/style.css")[0] == 200  # the key form's look, nothing else
    assert _request(port, "GET", "/?key=wrong")[0] == 401
    status, headers, _ = _request(port, "GET", f"/?key={KEY}")
    cookie = headers["set-cookie"]
    assert status == 303 and headers["location"] == "/"  # the key leaves the address bar
    assert f"flowring_key={KEY}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    jar = {"Cookie": f"flowring_key={KEY}"}
    status, _, page = _request(port, "GET", "/", jar)
    assert status == 200 and b"flowring dashboard" in page
    assert _request(port, "GET", "/v1/models", jar)[0] == 200  # what the chat box relies on
    assert _request(port, "GET", "/v1/models", {"Cookie": "flowring_key=wrong"})[0] == 401
    status, _, body = _request(port, "GET", "/dashboard/state", {"Authorization": f"Bearer {KEY}"})
    state = json.loads(body)
    assert status == 200 and state["reachable"] and state["ready"]
    assert {s["name"] for s in state["services"]} == SERVICES
    assert {s["name"]: s["layers"] for s in state["services"] if s["role"] == "stage"} == {"stage-1": [0, 2],
                                                                                             "stage-2": [2, 4]}


# The page redraws every second: read it in one script, never through element references that go stale.
CARDS = """return Object.fromEntries([...document.querySelectorAll(arguments[0])].map(e => [e.dataset.service,
  {pid: e.dataset.pid, healthy: e.dataset.healthy, restarts: e.dataset.restarts, text: e.textContent}]));"""


def _cards(driver, where: str = "#boards .service") -> dict[str, dict[str, str]]:
    """Every service card (or ring node) on the page: name -> its data attributes and text."""
    return driver.execute_script(CARDS, where)


def _state(cards: dict[str, dict[str, str]]) -> dict[str, tuple[str, str, str]]:
    return {name: (c["pid"], c["healthy"], c["restarts"]) for name, c in cards.items()}


def _text(driver, selector: str) -> str:
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                                 selector)


def test_the_page_follows_the_ring_and_streams_a_chat(served, tmp_path):
    spec, port = served
    with client_for(spec, 60) as client, chromium() as driver:
        driver.get(f"http://127.0.0.1:{port}/?key={KEY}")
        assert driver.current_url == f"http://127.0.0.1:{port}/"
        cards = _until("every service healthy", lambda: (c := _cards(driver)).keys() == SERVICES
                       and all(v["healthy"] == "true" for v in c.values()) and c)
        pids = {s.name: s.pid for s in client.status().services}
        assert {name: int(card["pid"]) for name, card in cards.items()} == pids
        nodes = _cards(driver, "#ring .node")
        assert nodes.keys() == SERVICES and "layers 2–4" in nodes["stage-2"]["text"]
        assert "layers 0–2" in cards["stage-1"]["text"] and "busy" in cards["stage-1"]["text"]

        os.kill(pids["stage-1"], signal.SIGSTOP)  # no heartbeats: unhealthy once the liveness timeout passes
        try:
            _until("stage-1 unhealthy", lambda: _cards(driver)["stage-1"]["healthy"] == "false", 15)
            assert "UNHEALTHY" in _cards(driver, "#ring .node")["stage-1"]["text"]
        finally:
            os.kill(pids["stage-1"], signal.SIGCONT)
        _until("stage-1 healthy again", lambda: _cards(driver)["stage-1"]["healthy"] == "true", 15)

        os.kill(pids["stage-2"], signal.SIGKILL)  # its supervisor starts it again
        new_pid = _until("a new stage-2", lambda: next((s.pid for s in client.status().services
                                                        if s.name == "stage-2" and s.pid != pids["stage-2"]
                                                        and s.healthy), 0), 60)
        _until("the restarted stage-2", lambda: _state(_cards(driver))["stage-2"] == (str(new_pid), "true", "1"), 15)

        messages = [{"role": "user", "content": "Tell me about rings."}]
        status, _, body = _request(port, "POST", "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"},
                                   {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0})
        expected = json.loads(body)["choices"][0]["message"]["content"]
        assert status == 200 and expected
        driver.execute_script(WATCH_ANSWERS)
        for field, value in (("temperature", "0"), ("max-tokens", "24")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "prompt").send_keys(messages[0]["content"])
        driver.find_element(By.ID, "send").click()
        _until("the chat answer", lambda: _text(driver, ".msg.assistant[data-done]"))
        assert _text(driver, ".msg.assistant[data-done] .text") == expected  # the chat's is the API's answer
        _until("tokens per second", lambda: _text(driver, "#tokens-per-s") not in ("–", "0.0"), 3)
        speed = _text(driver, ".msg.assistant[data-done] .speed")
        assert re.fullmatch(r"\d+ tokens in [\d.]+ s · [\d.]+ tokens/s · first token after \d+ ms", speed), speed
        shown = driver.execute_script("return window.__shown")
        lengths = [n for _, n in shown if n]
        assert len(set(lengths)) >= 2 and lengths == sorted(lengths), shown  # it grew in steps: streamed
        assert lengths[-1] == len(expected)

        _until("the chat's spans on the timeline", lambda: int(driver.execute_script(
            "return document.getElementById('timeline').dataset.spans || 0")) > 0, 10)
        _until("acceptance", lambda: _text(driver, "#acceptance") != "–", 5)
        shot = SCREENSHOT if os.environ.get("FLOWRING_DOC_ARTIFACTS") == "1" else tmp_path / "dashboard.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot))
