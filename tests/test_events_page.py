"""The events page at ``/``, in a real browser (headless Chromium): pick a topic, page back and
forth, follow the live stream, pause it; and the same page behind a read token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from stack.supervisor import Supervisor
from tests.fix_browser import Shot
from tests.fix_stack import StackFactory
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
    return read_all(driver, "#rows tr", "e.getAttribute('data-event-id') || ''")


def topics(driver: WebDriver) -> list[str]:
    return read_all(driver, "#topic option", "e.text")


def shows(driver: WebDriver, event_id: str) -> Callable[[], bool]:
    return lambda: event_id in row_ids(driver)


def key(driver: WebDriver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


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
    until("page 1 of the topic", lambda: row_ids(browser)[:1] == ["old000"])
    assert len(row_ids(browser)) == 100
    # Payloads exactly as stored: -0.0 and 2**63-1 are not JavaScript numbers.
    first_payload = browser.find_element(By.CSS_SELECTOR, "#rows tr td pre").text
    assert '"exact": -0.0' in first_payload and str(2**63 - 1) in first_payload
    shot("page-1")

    browser.find_element(By.ID, "next").click()
    until("page 2", lambda: row_ids(browser)[:1] == ["old100"])
    assert len(row_ids(browser)) == 50
    assert browser.find_element(By.ID, "pageno").text == "page 2"
    assert not browser.find_element(By.ID, "next").is_enabled()
    shot("page-2")
    key(browser, "b")  # back, from the keyboard
    until("page 1 again", lambda: row_ids(browser)[:1] == ["old000"])

    key(browser, "f")  # follow
    until("following", lambda: "Following live" in browser.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "follow").get_attribute("aria-pressed") == "true"
    for i in range(3):
        sent = time.monotonic()
        await publish(http, stack.ingest_url, [event(topic, f"live{i}")])
        until(f"live{i} on the page", shows(browser, f"live{i}"), timeout=2.0)
        assert time.monotonic() - sent < 2.0
    # Another topic's events do not show: the page's filter applies to the stream.
    await publish(http, stack.ingest_url, [event("other-" + topic, "elsewhere")])
    await publish(http, stack.ingest_url, [event(topic, "live3")])
    until("live3", lambda: "live3" in row_ids(browser), timeout=2.0)
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
    key(browser, "f")
    until("following", lambda: "Following live" in browser.find_element(By.ID, "status").text)
    await publish(http, stack.ingest_url, [event(topic, "t2")])
    until("t2 live, through the token", lambda: "t2" in row_ids(browser), timeout=2.0)
    shot("token-following")
