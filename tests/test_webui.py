"""The chat page (src/llamacpy/server/webui/) in a real browser, against a real `llamacpy serve` on stories260K.

Playwright's Python package drives Debian's chromium headless (Playwright's own browser download is not used;
LLAMACPY_CHROMIUM overrides the path). Without playwright or chromium the browser tests skip -- except under CI
(CI=true), where that is a failure. Screenshots of the page at the end of each browser test go to tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from serve_process import ServerProcess
from shared import models_dir

WEBUI = Path(__file__).resolve().parent.parent / "src" / "llamacpy" / "server" / "webui"
API_KEY = "webui-test-key"
SPEED = re.compile(r"(\d+) tokens · (\d+(?:\.\d+)?) tokens/s")


def test_page_is_small_and_self_contained():
    files = sorted(WEBUI.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "style.css"}
    total = sum(f.stat().st_size for f in files)
    assert total < 30 * 1024, f"webui is {total} bytes; the page must stay under ~30 KB"
    for f in files:
        text = f.read_text(encoding="utf-8")
        # No absolute or protocol-relative URL anywhere: everything is loaded from the serving origin.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"outside URL in {f.name}"
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text


# ---------- browser fixtures ----------

def _missing(what: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} -- required under CI (.ci/run installs chromium and playwright)")
    pytest.skip(what)


def _chromium_path() -> str:
    env = os.environ.get("LLAMACPY_CHROMIUM")
    for cand in [env] if env else ["/usr/bin/chromium", "chromium", "chromium-browser"]:
        path = shutil.which(cand) if cand else None
        if path:
            return path
    _missing(f"chromium not found at {env!r}" if env else
             "chromium not found (apt-get install -y chromium, or set LLAMACPY_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright Python package is not installed (pip install playwright)")
    exe = _chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    # One slot: a reply that is stopped must give its slot back, or the next message could not start.
    srv = ServerProcess(models_dir() / "stories260K.gguf", "-np", "1", "-c", "1024", api_key=API_KEY)
    try:
        srv.wait_ready()
        srv.warm_up()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def page(browser, server):
    """A fresh browser context on the server's page, recording every request and any script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    pg = context.new_page()
    pg.requests, pg.errors = [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _assert_same_origin(page, base: str):
    outside = [u for u in page.requests if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert not outside, f"requests outside the server: {outside}"
    assert not page.errors, f"script errors: {page.errors}"


def _settings(page, **fields):
    page.click("#settings-toggle")
    for name, value in fields.items():
        page.fill(f"#s-{name}", str(value))
    page.click("#settings-close")


def _reply_len(page) -> int:
    return page.evaluate("() => { const r = document.querySelectorAll('.msg.assistant .content');"
                         " return r.length ? r[r.length - 1].textContent.length : 0; }")


def _wait_growing(page, n: int):
    page.wait_for_function(f"() => {{ const r = document.querySelectorAll('.msg.assistant.streaming .content');"
                           f" return r.length && r[r.length - 1].textContent.length > {n}; }}")


def _stored(page) -> list:
    return json.loads(page.evaluate("() => localStorage.getItem('llamacpy.conversations.v1')") or "[]")


# ---------- the real server ----------

def test_chat_streams_stops_and_keeps_conversations(page, server, tmp_path):
    base = server.url
    page.goto(base + "/")
    page.wait_for_function("() => document.getElementById('model-name').textContent === 'stories260K.gguf'")
    _settings(page, temperature=0, max_tokens=48, seed=7)

    # Shift+Enter is a new line, not a send.
    page.click("#input")
    page.keyboard.type("Once upon a time")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("there was")
    assert page.input_value("#input") == "Once upon a time\nthere was"
    assert page.locator(".msg").count() == 0

    # Record the reply's length at every change, to see it grow while it streams.
    page.evaluate("""() => { window.__lens = [];
        new MutationObserver(() => { const r = document.querySelectorAll('.msg.assistant .content');
            if (r.length) window.__lens.push(r[r.length - 1].textContent.length); })
        .observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true}); }""")
    page.keyboard.press("Enter")

    # The server has --api-key: the page gets 401 and asks for the key.
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector(".msg.assistant.done")
    lens = page.evaluate("() => window.__lens")
    grown = sorted(set(n for n in lens if n > 0))
    assert len(grown) >= 3, f"the reply did not grow while streaming: {lens}"
    assert lens[-1] == max(lens)

    # The page's text is the server's own answer for the same request, sent without streaming.
    conv = _stored(page)
    assert len(conv) == 1 and [m["role"] for m in conv[0]["messages"]] == ["user", "assistant"]
    text = conv[0]["messages"][1]["content"]
    plain = httpx.post(base + "/v1/chat/completions", headers=server.headers, timeout=120, json={
        "messages": [{"role": "user", "content": "Once upon a time\nthere was"}],
        "temperature": 0, "max_tokens": 48, "seed": 7}).json()
    assert text == plain["choices"][0]["message"]["content"] and text
    speed = page.locator(".msg.assistant .speed").last.text_content()
    m = SPEED.search(speed)
    assert m, speed
    assert int(m.group(1)) == plain["usage"]["completion_tokens"] and float(m.group(2)) > 0

    # The key lives in sessionStorage only.
    assert page.evaluate("() => sessionStorage.getItem('llamacpy.apiKey')") == API_KEY
    assert API_KEY not in page.evaluate("() => JSON.stringify(Object.assign({}, localStorage))")

    # A long reply, stopped midway with the Stop button: it stops growing and the server's slot is free.
    _settings(page, max_tokens=100000)
    page.fill("#input", "Tell me a long story")
    page.click("#send")
    _wait_growing(page, 30)
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.done >> nth=1")
    stopped_len = _reply_len(page)
    assert "stopped" in page.locator(".msg.assistant .speed").last.text_content()
    assert page.locator("#stop").is_hidden() and page.locator("#send").is_enabled()
    deadline = time.monotonic() + 15
    while any(s["is_processing"] for s in httpx.get(base + "/slots", headers=server.headers).json()):
        assert time.monotonic() < deadline, "the slot stayed busy after the page stopped its stream"
        time.sleep(0.1)
    page.wait_for_timeout(500)
    assert _reply_len(page) == stopped_len > 30

    # Esc stops too (and the single slot was free for this new message).
    page.fill("#input", "And then?")
    page.press("#input", "Enter")
    _wait_growing(page, 10)
    page.keyboard.press("Escape")
    page.wait_for_selector(".msg.assistant.done >> nth=2")
    assert "stopped" in page.locator(".msg.assistant .speed").last.text_content()

    # A second conversation.
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    _settings(page, max_tokens=8)
    page.fill("#input", "Second chat")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done")
    assert page.locator("#conversations li").count() == 2

    # Reload: both conversations are there, the last one shown; switch to the first.
    page.reload()
    page.wait_for_selector("#conversations li >> nth=1")
    assert page.locator("#conversations li.active .open").text_content() == "Second chat"
    page.locator("#conversations .open", has_text="Once upon a time").click()
    msgs = page.locator(".msg")
    assert msgs.count() == 6
    assert msgs.nth(0).locator(".content").inner_text() == "Once upon a time\nthere was"
    assert SPEED.search(msgs.nth(1).locator(".speed").text_content())
    assert "stopped" in msgs.nth(3).locator(".speed").text_content()
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

    # Delete the second conversation; it stays deleted after a reload.
    page.locator("#conversations li", has_text="Second chat").locator(".delete").click()
    assert page.locator("#conversations li").count() == 1
    page.reload()
    page.wait_for_selector(".msg.assistant")
    assert page.locator("#conversations li").count() == 1
    assert page.locator(".msg").count() == 6
    page.screenshot(path=str(tmp_path / "after-reload.png"), full_page=True)
    _assert_same_origin(page, base)


# ---------- model text is text, never HTML ----------

HOSTILE = ('<script>window.__pwned = 1</script> and <img src="x" onerror="window.__pwned = 2">'
           '\nline two\n```html\n<b onmouseover="window.__pwned = 3">bold?</b>\n```\nafter `<i>code</i>`')


def _check_text_only(page):
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#messages script, #messages img, #messages b, #messages i, #sidebar img").count() == 0
    content = page.locator(".msg.assistant .content").last
    text = content.text_content()
    assert '<script>window.__pwned = 1</script>' in text and '<img src="x" onerror="window.__pwned = 2">' in text
    assert content.locator(".text").first.inner_text().endswith("\nline two")   # line break shown as such
    pre = content.locator("pre")
    assert pre.get_attribute("data-lang") == "html"
    assert pre.locator("code").text_content() == '<b onmouseover="window.__pwned = 3">bold?</b>'
    assert content.locator(".text code").text_content() == "<i>code</i>"


def test_model_text_is_shown_as_text(page, server, tmp_path):
    base = server.url

    def sse(route):
        pieces = [HOSTILE[i:i + 7] for i in range(0, len(HOSTILE), 7)]   # tags split over chunks
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
        events += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "timings": {"predicted_n": 11, "predicted_per_second": 12.5}})
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", sse)
    page.goto(base + "/")
    page.fill("#input", '<img src="y" onerror="window.__pwned = 4"> hi')
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done")
    _check_text_only(page)
    assert page.locator(".msg.assistant .speed").text_content() == "11 tokens · 12.5 tokens/s"
    assert page.locator(".msg.user .content").text_content() == '<img src="y" onerror="window.__pwned = 4"> hi'

    # The same from a conversation already in localStorage (as after a reload), title included.
    page.evaluate("""(hostile) => localStorage.setItem('llamacpy.conversations.v1', JSON.stringify([{
        id: 'x1', title: '<img src=z onerror="window.__pwned = 5">', updated: 1,
        messages: [{role: 'user', content: 'q'}, {role: 'assistant', content: hostile, meta: {}}]}]))""", HOSTILE)
    page.evaluate("() => localStorage.setItem('llamacpy.current.v1', 'x1')")
    page.reload()
    page.wait_for_selector(".msg.assistant")
    _check_text_only(page)
    assert page.locator("#conversations .open").text_content() == '<img src=z onerror="window.__pwned = 5">'
    page.screenshot(path=str(tmp_path / "text-only.png"), full_page=True)

    # On a narrow screen the conversation list is a drawer behind the "Chats" button.
    page.set_viewport_size({"width": 390, "height": 700})
    assert page.locator("#sidebar").is_hidden()
    page.click("#chats-toggle")
    assert page.locator("#sidebar").is_visible()
    page.screenshot(path=str(tmp_path / "narrow-chats.png"))
    page.click("#conversations .open")
    assert page.locator("#sidebar").is_hidden()
    _assert_same_origin(page, base)
    assert not any(re.search(r"/[xyz]$", u) for u in page.requests)


# ---------- what the settings send, and errors ----------

def _sse_reply(text: str) -> str:
    events = [{"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "timings": {"predicted_n": 1, "predicted_per_second": 100.0}}]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_settings_reach_the_request_and_errors_are_shown(page, server):
    bodies = []

    def chat(route):
        bodies.append(route.request.post_data_json)
        if len(bodies) == 1:
            route.fulfill(status=400, content_type="application/json", body=json.dumps(
                {"error": {"code": 400, "message": "bad <thing>", "type": "invalid_request_error"}}))
        elif len(bodies) == 4:   # cut off: no finish_reason, no [DONE]
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body=_sse_reply("half").split("\n\n")[0] + "\n\n")
        else:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_sse_reply("ok"))

    page.route("**/v1/chat/completions", chat)
    page.goto(server.url + "/")
    _settings(page, system="Be brief.", temperature=0.5, top_p=0.9, max_tokens=16, seed=3,
              grammar='root ::= "yes"', json_schema='{"type": "object"}')
    page.fill("#input", "first")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.error.done")
    assert page.locator(".msg.assistant .speed").text_content() == "error: 400: bad <thing>"

    page.fill("#input", "second")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done >> nth=1")
    assert bodies[1] == {   # the failed exchange is not sent again
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "second"}],
        "stream": True, "temperature": 0.5, "top_p": 0.9, "max_tokens": 16, "seed": 3,
        "grammar": 'root ::= "yes"',
        "response_format": {"type": "json_schema", "json_schema": {"name": "schema", "schema": {"type": "object"}}}}

    # Bad settings are named and nothing is sent; the typed message stays in the box.
    _settings(page, json_schema="{oops")
    page.fill("#input", "third")
    page.press("#input", "Enter")
    assert "JSON schema is not valid JSON" in page.locator("#notice").text_content()
    assert page.locator("#settings").is_visible() and page.input_value("#input") == "third"
    page.fill("#s-json_schema", "")
    page.fill("#s-seed", "1.5")
    assert "seed must be an integer" in page.locator("#settings-error").text_content()
    assert len(bodies) == 2

    # Settings are kept across a reload; after Reset only messages and stream are sent.
    page.reload()
    page.wait_for_selector(".msg.assistant >> nth=1")
    page.click("#settings-toggle")
    assert page.input_value("#s-temperature") == "0.5" and page.input_value("#s-system") == "Be brief."
    page.click("#settings-reset")
    page.keyboard.press("Escape")   # with nothing to stop, Esc closes the settings
    assert page.locator("#settings").is_hidden()
    page.fill("#input", "fourth")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done >> nth=2")
    assert set(bodies[2]) == {"messages", "stream"}
    assert [m["content"] for m in bodies[2]["messages"]] == ["second", "ok", "fourth"]

    # A stream that ends without its last event is an error, with the text it brought kept.
    page.fill("#input", "fifth")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done >> nth=3")
    last = page.locator(".msg.assistant").last
    assert "error" in last.get_attribute("class") and last.locator(".content").text_content() == "half"
    assert "closed the stream" in last.locator(".speed").text_content()
    _assert_same_origin(page, server.url)
