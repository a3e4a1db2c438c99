"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium, for
the events page. ``./scripts/test`` installs both; without them the browser tests fail, saying
what to install. Screenshots go to ``PUBSUB_TEST_ARTIFACTS`` (default ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Shot = Callable[[str], Path]


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"none of {', '.join(names)} is installed: the browser tests need Debian's chromium and "
        "chromium-driver (apt-get install chromium chromium-driver; ./scripts/test does it)"
    )


@pytest.fixture(scope="session")
def artifacts() -> Path:
    root = Path(__file__).resolve().parents[1]
    path = Path(os.environ.get("PUBSUB_TEST_ARTIFACTS", root / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(artifacts: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    # Selenium must use the driver given here, never fetch one (no network for that).
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = _find("chromium", "chromium-browser")
    driver_path = _find("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="pubsub-chromium-")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            driver.save_screenshot(str(artifacts / f"{request.node.name}-failed.png"))
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shot(browser: object, artifacts: Path, request: pytest.FixtureRequest) -> Shot:
    """``shot(name)``: a screenshot of the page now, kept as a test artefact."""

    def take(name: str) -> Path:
        path = artifacts / f"{request.node.name}-{name}.png"
        browser.save_screenshot(str(path))  # type: ignore[attr-defined]
        return path

    return take


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, "rep_" + report.when, report)  # type: ignore[attr-defined]
    return report
