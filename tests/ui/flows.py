"""What people do in the web UI, as reusable Playwright steps (sync API).

Other test layers (e.g. SSH end to end) import these to drive the UI exactly as documented.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# The committed screenshots change only when asked (they differ on every run: keys, ports,
# times); otherwise they are still taken, into a scratch directory, so rendering is exercised.
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("HATCHWAY_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "hatchway-ui-screenshots"
)


def require_browser() -> None:
    """Skip (not root: cannot install) or fail (root: scripts/setup should have) without Chromium."""
    if not os.path.exists(CHROMIUM):
        if os.geteuid() != 0:
            pytest.skip(
                f"browser tests need Debian's Chromium at {CHROMIUM}; run scripts/test as root "
                "(it installs the chromium package) or apt-get install chromium"
            )
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup as root, which installs the chromium package")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (never 'playwright install')")


def sign_in(page: Any, url: str, username: str, password: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))


@contextmanager
def signed_in_page(browser: Any, url: str, username: str, password: str, viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A fresh browser context signed in as ``username``; closed afterwards."""
    context = browser.new_context(viewport=viewport or DESKTOP, accept_downloads=True)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        sign_in(page, url, username, password)
        yield page
    finally:
        context.close()


def open_manage(page: Any, item: str) -> None:
    """Manage > ``item`` through the header menu."""
    page.get_by_role("button", name="Manage").click()
    page.get_by_role("menuitem", name=item).click()


def open_provider_edit(page: Any, provider: str) -> None:
    """Manage > Providers > ⋮ (the provider's row) > Edit."""
    open_manage(page, "Providers")
    page.wait_for_url(re.compile(r".*/manage/providers$"))
    row = page.locator(f'tr[data-provider="{provider}"]')
    row.get_by_role("button", name=f"Actions for provider {provider}").click()
    row.get_by_role("menuitem", name="Edit").click()
    page.wait_for_url(re.compile(rf".*/manage/providers/{re.escape(provider)}/edit$"))


def set_external_connect(page: Any, provider: str, on: bool) -> str:
    """The documented path: Manage > Providers > ⋮ > Edit > Features > External Connect > Save.

    Returns the flash message shown after saving (the page is then the providers list)."""
    open_provider_edit(page, provider)
    features = page.locator("#features")
    features.scroll_into_view_if_needed()
    toggle = features.get_by_role("switch", name="External Connect")
    toggle.set_checked(on)
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(re.compile(r".*/manage/providers$"))
    return page.locator(".flash").inner_text()


def external_connect_badge(page: Any, provider: str) -> str:
    return page.locator(f'tr[data-provider="{provider}"] td[data-label="External Connect"]').inner_text().strip()


def expect_list_page(page: Any, rows: Any, count: int, where: str, page_of: str) -> None:
    """A long list shows ``count`` ``rows``, says which of them ("26–50 of 57") and which page
    ("Page 2 of 3") in its pager."""
    from playwright.sync_api import expect

    expect(rows).to_have_count(count)
    expect(page.locator(".pager > span.muted")).to_have_text(where)
    expect(page.locator(".pager-links > span.muted")).to_have_text(page_of)


def filter_list(page: Any, label: str, text: str) -> None:
    """Type ``text`` into a long list's filter box (labelled ``label``) and press Filter."""
    page.get_by_label(label).fill(text)
    page.get_by_role("button", name="Filter").click()


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
