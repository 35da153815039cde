"""The browser checks' own guards can fail: a request to another machine is caught (and never sent), and a blank
page does not pass for a painted one."""

from __future__ import annotations

import pytest

from tests.browser.conftest import is_local, non_background_fraction

pytestmark = pytest.mark.browser


def test_a_request_off_the_machine_is_caught_and_aborted(browser):
    page = browser.new_page()
    page.set_content('<img src="https://203.0.113.7/pixel.png"><img src="http://127.0.0.1:9/local.png">')
    page.wait_for_load_state("load")

    assert browser.remote_requests() == ["https://203.0.113.7/pixel.png"]
    assert "https://203.0.113.7/pixel.png" in browser.blocked


def test_a_blank_page_is_not_taken_for_a_painted_one(browser):
    page = browser.new_page()
    assert non_background_fraction(page.screenshot()) == 0.0
    page.set_content(
        "<h1 style='font-size:120px'>bonescan</h1><div style='background:#345;height:400px'></div>"
    )
    assert non_background_fraction(page.screenshot()) > 0.02


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:5000/#/models/x", True),
        ("ws://localhost:4200/api/events", True),
        ("file:///tmp/dvc_plots/index.html", True),
        ("data:image/png;base64,AAAA", True),
        ("https://cdn.jsdelivr.net/npm/vega@5.20.2", False),
        ("http://127.0.0.1.example.org/", False),
        ("http://10.0.0.5:5000/", False),
    ],
)
def test_only_loopback_and_in_page_urls_count_as_local(url, local):
    assert is_local(url) is local
