"""The events page at ``/``, in a real browser (headless Chromium): pick a topic, page back and
forth in both orders, expand an event, follow the live stream, pause it; search among 100,000
events; narrow the range by the chart; and the same page behind a read token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from stack.supervisor import Supervisor
from tests.fix_browser import Shot
from tests.fix_stack import StackFactory
from tests.fix_tenants import MULTI, headers
from tests.support import event, post_json, settled, stats

T = TypeVar("T")


def until(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """``probe()`` once it is truthy, polled until ``timeout`` seconds.

    The page re-renders its rows and options as data arrives, so an element found a moment ago
    may be gone by the time it is read: that counts as "not yet", not as a failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def read_all(driver: WebDriver, selector: str, value: str) -> list[str]:
    """``value`` (a JavaScript expression of ``e``) of every element matching ``selector``, read
    by one script: element by element, a re-render in between would leave stale references."""
    values: list[str] = driver.execute_script(
        f"return Array.from(document.querySelectorAll({selector!r}), e => {value});"
    )
    return values


def row_ids(driver: WebDriver) -> list[str]:
    return read_all(driver, "#rows .ev", "e.getAttribute('data-event-id') || ''")


def topics(driver: WebDriver) -> list[str]:
    return read_all(driver, "#topic option", "e.text")


def shows(driver: WebDriver, event_id: str) -> Callable[[], bool]:
    return lambda: event_id in row_ids(driver)


def key(driver: WebDriver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def bars(driver: WebDriver) -> list[str]:
    """The chart's bars, as ``start=count``."""
    return read_all(driver, "#chart rect.b", "e.dataset.start + '=' + e.dataset.count")


async def publish(http: aiohttp.ClientSession, url: str, events: list[dict[str, Any]]) -> None:
    status, body, _ = await post_json(http, url, events)
    assert status == 202, body


async def test_pick_a_topic_page_follow_and_pause(
    stack: Supervisor, http: aiohttp.ClientSession, browser: WebDriver, shot: Shot
) -> None:
    topic = f"page-{uuid.uuid4().hex[:8]}"
    before = await stats(http, stack.read_url)
    await publish(http, stack.ingest_url, [
        event(topic, f"old{i:03d}", timestamp=f"2025-10-21T10:{i // 60:02d}:{i % 60:02d}Z",
              payload={"n": i, "exact": -0.0, "big": 2**63 - 1})
        for i in range(150)
    ])  # fmt: skip
    await settled(http, stack.read_url, before["received"] + 150)

    browser.get(stack.read_url + "/")
    assert browser.title.startswith("pubsub-aggregator")
    picker = Select(browser.find_element(By.ID, "topic"))
    until("the topic in the picker", lambda: topic in topics(browser))
    picker.select_by_visible_text(topic)
    # Newest first by default, one line per event.
    until("page 1 of the topic", lambda: row_ids(browser)[:1] == ["old149"])
    assert len(row_ids(browser)) == 100
    line = browser.find_element(By.CSS_SELECTOR, "#rows .ev .line")
    assert line.size["height"] < 30
    assert '"exact":-0.0' in line.find_element(By.CLASS_NAME, "payload").text
    shot("page-1")

    browser.find_element(By.ID, "next").click()
    until("page 2", lambda: row_ids(browser)[:1] == ["old049"])
    assert row_ids(browser)[-1] == "old000" and len(row_ids(browser)) == 50
    assert browser.find_element(By.ID, "pageno").text == "page 2"
    assert not browser.find_element(By.ID, "next").is_enabled()
    shot("page-2")
    key(browser, "b")  # back, from the keyboard
    until("page 1 again", lambda: row_ids(browser)[:1] == ["old149"])
    key(browser, "o")  # oldest first
    until("oldest first", lambda: row_ids(browser)[:1] == ["old000"])
    assert browser.find_element(By.ID, "order").text == "Oldest first"

    # Expand and collapse: the payload pretty-printed exactly as stored (-0.0 and 2**63-1 are
    # not JavaScript numbers), with a copy button.
    first = browser.find_element(By.CSS_SELECTOR, "#rows .ev")
    first.find_element(By.CLASS_NAME, "line").click()
    until("expanded", lambda: first.get_attribute("aria-expanded") == "true")
    pretty = first.find_element(By.CSS_SELECTOR, ".detail pre").text
    assert '"exact": -0.0' in pretty and str(2**63 - 1) in pretty and "\n" in pretty
    first.find_element(By.CLASS_NAME, "copy").click()
    until("copied", lambda: first.find_element(By.CLASS_NAME, "copy").text.startswith("Copied"))
    shot("expanded")
    first.send_keys(Keys.ENTER)  # focused by the click: Enter collapses it
    until("collapsed", lambda: first.get_attribute("aria-expanded") == "false")
    assert first.find_elements(By.CLASS_NAME, "detail") == []
    key(browser, "o")  # newest first again
    until("newest first", lambda: row_ids(browser)[:1] == ["old149"])

    key(browser, "f")  # follow
    until("following", lambda: "Following live" in browser.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "follow").get_attribute("aria-pressed") == "true"
    for i in range(3):
        await publish(http, stack.ingest_url, [event(topic, f"live{i}")])
        until(f"live{i} on the page", shows(browser, f"live{i}"), timeout=30.0)
    # Another topic's events do not show: the page's filter applies to the stream.
    await publish(http, stack.ingest_url, [event("other-" + topic, "elsewhere")])
    await publish(http, stack.ingest_url, [event(topic, "live3")])
    until("live3", lambda: "live3" in row_ids(browser), timeout=30.0)
    assert "elsewhere" not in row_ids(browser)
    assert row_ids(browser)[:4] == ["live3", "live2", "live1", "live0"]
    shot("following")

    key(browser, "p")  # pause
    paused = browser.find_element(By.ID, "paused")
    until("the paused state shows", paused.is_displayed)
    await publish(http, stack.ingest_url, [event(topic, "held0"), event(topic, "held1")])
    until("2 counted while paused", lambda: browser.find_element(By.ID, "held").text == "2")
    assert "held0" not in row_ids(browser)
    shot("paused")
    browser.find_element(By.ID, "pause").click()  # resume
    until("held events shown", lambda: {"held0", "held1"} <= set(row_ids(browser)))
    assert not paused.is_displayed()

    browser.find_element(By.ID, "clear").click()
    assert row_ids(browser) == []


async def test_the_page_asks_for_the_read_token_and_then_works(
    own_stack: StackFactory, http: aiohttp.ClientSession, browser: WebDriver, shot: Shot
) -> None:
    stack = own_stack(read_token="page-secret", consumers=1)
    stack.start_all()
    topic = f"tok-{uuid.uuid4().hex[:8]}"
    await publish(http, stack.ingest_url, [event(topic, "t1")])

    browser.get(stack.read_url + "/")
    box = browser.find_element(By.ID, "token-box")
    until("the token prompt", box.is_displayed)
    assert "read token" in browser.find_element(By.ID, "status").text
    shot("token-asked")
    browser.find_element(By.ID, "token").send_keys("page-secret\n")
    picker = Select(browser.find_element(By.ID, "topic"))
    until("topics with the token", lambda: topic in topics(browser), 15.0)
    picker.select_by_visible_text(topic)
    until("the event", lambda: row_ids(browser) == ["t1"])
    until("the chart, through the token", lambda: bars(browser))
    key(browser, "f")
    until("following", lambda: "Following live" in browser.find_element(By.ID, "status").text)
    await publish(http, stack.ingest_url, [event(topic, "t2")])
    until("t2 live, through the token", lambda: "t2" in row_ids(browser), timeout=30.0)
    shot("token-following")


async def test_search_finds_a_needle_among_100000_events(
    stack: Supervisor, http: aiohttp.ClientSession, browser: WebDriver, shot: Shot
) -> None:
    topic = f"hay-{uuid.uuid4().hex[:8]}"
    needle = f"needle{uuid.uuid4().hex[:8]}"
    before = await stats(http, stack.read_url)
    batches = [
        [
            event(topic, f"h{b}-{i}", timestamp=f"2025-10-22T{b % 24:02d}:{i % 60:02d}:00Z",
                  payload={"msg": f"request {b}-{i} served", "ms": i % 97})
            for i in range(5000)
        ]
        for b in range(20)
    ]  # fmt: skip
    batches[13][2500]["payload"] = {"msg": f"payment {needle} refused", "ms": 1}
    for batch in batches:
        await publish(http, stack.ingest_url, batch)
    await settled(http, stack.read_url, before["received"] + 100_000, timeout=120)

    browser.get(stack.read_url + "/")
    key(browser, "/")  # the search box
    browser.switch_to.active_element.send_keys(needle.upper() + Keys.ENTER)
    until("the needle", lambda: row_ids(browser) == ["h13-2500"], timeout=20)
    assert needle in browser.find_element(By.CSS_SELECTOR, "#rows .ev .payload").text
    until("a chart of the one match", lambda: sum(int(b.split("=")[1]) for b in bars(browser)) == 1)
    shot("search")


async def test_clicking_a_bar_narrows_the_range_and_follow_applies_the_filters(
    stack: Supervisor, http: aiohttp.ClientSession, browser: WebDriver, shot: Shot
) -> None:
    topic = f"bars-{uuid.uuid4().hex[:8]}"
    before = await stats(http, stack.read_url)
    # Two hours, 10:00 to 11:59, with 1 to 4 events a minute: the chart has one bar a minute.
    sent = [
        event(
            topic,
            f"m{k:03d}-{j}",
            timestamp=f"2025-10-23T{10 + k // 60:02d}:{k % 60:02d}:{30 + j}Z",
            source=f"web-{j}",
            payload={"word": "odd" if k % 2 else "even", "path": f"/api/orders/{k}",
                     "status": 200 + j, "ms": 3 * k + j},
        )
        for k in range(120)
        for j in range(k % 4 + 1)
    ]  # fmt: skip
    await publish(http, stack.ingest_url, sent)
    await settled(http, stack.read_url, before["received"] + len(sent))

    browser.get(stack.read_url + "/")
    browser.find_element(By.ID, "utc").click()
    picker = Select(browser.find_element(By.ID, "topic"))
    until("the topic in the picker", lambda: topic in topics(browser))
    picker.select_by_visible_text(topic)
    until("120 bars", lambda: len(bars(browser)) == 120)
    # The rows load apart from the chart: clicking one before they did finds it replaced.
    until("the topic's rows, newest first", lambda: row_ids(browser)[:1] == ["m119-3"])
    assert bars(browser)[:3] == [
        "2025-10-23T10:00:00.000Z=1", "2025-10-23T10:01:00.000Z=2", "2025-10-23T10:02:00.000Z=3"
    ]  # fmt: skip
    browser.find_element(By.CSS_SELECTOR, "#rows .ev .line").click()
    shot("overview")
    target = browser.find_element(
        By.CSS_SELECTOR, '#chart rect.b[data-start="2025-10-23T10:45:00.000Z"]'
    )
    target.click()
    until("the range narrowed to the bar", lambda: row_ids(browser) == ["m045-1", "m045-0"])
    # The range inputs say so (Chromium drops ":00" seconds: compare the times).
    for box, at in (("since", "2025-10-23T10:45:00"), ("until", "2025-10-23T10:46:00")):
        value = browser.find_element(By.ID, box).get_attribute("value") or ""
        assert datetime.fromisoformat(value) == datetime.fromisoformat(at)
    shot("zoomed")

    # Follow with a search: only matching events arrive, at the top, and count in the chart.
    browser.find_element(By.ID, "whole-range").click()
    until("the whole range again", lambda: len(row_ids(browser)) == 100)
    search_box = browser.find_element(By.ID, "q")
    search_box.send_keys("odd" + Keys.ENTER)
    until("odd ones only", lambda: row_ids(browser)[:2] == ["m119-3", "m119-2"])
    key(browser, "f")
    until("following", lambda: "Following live" in browser.find_element(By.ID, "status").text)
    now = datetime.now(UTC).isoformat()
    await publish(http, stack.ingest_url, [
        event(topic, "live-even", timestamp=now, payload={"word": "even"}),
        event(topic, "live-odd", timestamp=now, payload={"word": "odd"}),
    ])  # fmt: skip
    until("the odd live event", lambda: row_ids(browser)[:1] == ["live-odd"], timeout=3.0)
    assert "live-even" not in row_ids(browser)
    until("the chart's last bar counts it", lambda: bars(browser)[-1].endswith("=1"))
    shot("following-search")


async def test_the_page_reads_as_the_tenant_it_is_given_and_forgets_the_token_on_reload(
    tenant_stack: Supervisor, http: aiohttp.ClientSession, browser: WebDriver, shot: Shot
) -> None:
    mine, theirs = (f"{who}-{uuid.uuid4().hex[:8]}" for who in ("beta", "alpha"))
    for who, topic in (("beta", mine), ("alpha", theirs)):
        async with http.post(
            f"{tenant_stack.ingest_url}/publish", json=[event(topic, "x")], headers=headers(who)
        ) as resp:
            assert resp.status == 202
    browser.get(tenant_stack.read_url + "/")
    until("the token prompt", browser.find_element(By.ID, "token-box").is_displayed)
    browser.find_element(By.ID, "tenant").send_keys("beta")
    browser.find_element(By.ID, "token").send_keys(MULTI + "\n")
    until("beta's topic", lambda: mine in topics(browser), 15.0)
    assert theirs not in topics(browser)
    shot("tenant-beta")
    browser.refresh()  # the token lived in the page's memory only
    until("the token prompt again", browser.find_element(By.ID, "token-box").is_displayed)
