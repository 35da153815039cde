"""Headless Chromium (Debian's package, driven by Playwright) for the browser checks, screenshots kept for CI's log.

The browser is the system's `chromium` (`apt-get install chromium`); nothing is downloaded. Without it the
browser tests skip, unless BONESCAN_REQUIRE_BROWSER=1 (as in CI), where its absence fails them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"file", "data", "blob", "about"}


def screenshot_dir() -> Path:
    """$BONESCAN_SCREENSHOTS, or test-artifacts/screenshots/ in the project (git-ignored)."""
    folder = Path(os.environ.get("BONESCAN_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.scheme in ("http", "https", "ws", "wss")
                                             and parts.hostname in LOOPBACK_HOSTS)  # fmt: skip


def non_background_fraction(png: bytes) -> float:
    """Share of a screenshot's pixels that differ from its most common colour (0.0: a blank page)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(np.uint32)
    packed = (
        rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]
    )  # one integer per colour: a 1-D sort, not a row sort
    _, counts = np.unique(packed, return_counts=True)
    return 1.0 - counts.max() / len(packed)


def _unavailable(message: str) -> None:
    """Skip, or fail where the browser is required (BONESCAN_REQUIRE_BROWSER=1, as .ci/run sets)."""
    if os.environ.get("BONESCAN_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("no system Chromium: `apt-get install chromium` (Debian) to run the browser checks")
    return path


class Browser:
    """One headless Chromium; every page's requests are recorded, and any that would leave the machine is
    aborted before it is sent (and recorded, so the test that caused it fails)."""

    def __init__(self, browser) -> None:
        self._browser = browser
        self.requests: list[str] = []
        self.blocked: list[str] = []

    def _route(self, route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def new_page(self):
        self.requests.clear()
        self.blocked.clear()
        context = self._browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        context.route("**/*", self._route)
        page = context.new_page()
        page.on("request", lambda request: self.requests.append(request.url))
        return page

    def remote_requests(self) -> list[str]:
        """Requests of the current page that went (or would have gone) to a non-loopback address."""
        return sorted(set(self.blocked) | {url for url in self.requests if not is_local(url)})


@pytest.fixture(scope="module")  # closed with its test module, not left running for the rest of the suite
def browser(chromium_path) -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("no Playwright: install the locked dev dependencies (`make install`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path,
            args=[
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
                # Belt and braces: no host name resolves, so not even Chromium's own background traffic
                # (component updates, safe browsing) can leave; the servers are addressed by IP.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            ],
        )
        try:
            yield Browser(chromium)
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    return screenshot_dir()
