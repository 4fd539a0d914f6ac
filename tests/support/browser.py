"""Headless Chromium through Selenium (Debian's ``chromium`` and ``chromium-driver``).

:func:`unavailable` says why no browser can run here, or returns "". The flags are the ones that work in
a container without a display, a GPU, a sandbox or a network beyond the machine.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _binary(*names: str) -> str:
    return next((path for name in names if (path := shutil.which(name))), "")


def unavailable() -> str:
    """Why Chromium cannot be driven here, or ""."""
    if not _binary("chromium", "chromium-browser"):
        return "needs Chromium (apt-get install -y chromium chromium-driver)"
    if not _binary("chromedriver"):
        return "needs chromedriver (apt-get install -y chromium-driver)"
    return ""


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium with a fresh, empty profile; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="flowring-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = _binary("chromium", "chromium-browser")
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
        try:
            yield driver
        finally:
            driver.quit()
