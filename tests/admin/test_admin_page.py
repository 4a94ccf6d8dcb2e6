"""The admin page (``GET /``) in a real browser: headless Chromium via selenium.

A real ``fivetuple serve echo --admin`` process serves the page; a plain TCP
client comes and goes, and the page must show it and then drop it, as a person
watching it would see. Needs selenium (the ``test`` extra) and Debian's
chromium + chromium-driver (.ci/run installs both). Without them the module is
skipped here, but fails under CI, so that a missing install step cannot turn
the check into a silent skip. Each test gets its own server; the browser is
shared by the module.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet import gathering, worker_servers

from helpers import CliServer, connect

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
if webdriver is None:
    MISSING.append("the selenium package")
if MISSING:
    WHY = (
        f"no {', '.join(MISSING)}; install them with "
        "'apt-get install chromium chromium-driver' and 'pip install -e .[test]'"
    )
    if os.environ.get("CI"):
        pytest.fail(WHY, pytrace=False)  # CI installs them: a skip there would hide a bug
    pytest.skip(WHY, allow_module_level=True)

STARTUP_TIMEOUT_S = 10.0
PAGE_TIMEOUT_S = 5.0  # the page refreshes every second
REMOTES_JS = (
    "return Array.from(document.querySelectorAll('#conns tr[data-conn-id] .remote'),"
    " cell => cell.textContent)"
)


def read_line(server: CliServer, timeout: float = STARTUP_TIMEOUT_S) -> str:
    """The server's next stdout line, or fail after ``timeout`` seconds."""
    stdout = server.proc.stdout
    assert stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise AssertionError(f"no second line from the server within {timeout}s")
    return box[0].strip()


@pytest.fixture
def served() -> Iterator[tuple[CliServer, str]]:
    """An echo server with its admin endpoint: (server, admin base URL)."""
    with CliServer("echo", "--port", "0", "--admin", "127.0.0.1:0") as server:
        line = read_line(server)
        match = re.fullmatch(r"admin on (http://127\.0\.0\.1:\d+)/?", line)
        assert match, f"unexpected second line: {line!r}"
        assert server.port is not None
        yield server, match.group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    # Both paths given: selenium never tries to download a browser or a driver.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(STARTUP_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Any, what: str) -> Any:
    return WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.1).until(
        condition, message=f"within {PAGE_TIMEOUT_S}s: {what}"
    )


def count_text(driver: Any) -> str:
    return driver.find_element(By.ID, "conn-count").text


def row_ids(driver: Any) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#conns tr[data-conn-id]'),"
        " row => Number(row.dataset.connId))"
    )


def test_page_shows_a_client_come_and_go(served: tuple[CliServer, str], browser: Any) -> None:
    server, url = served
    browser.get(url + "/")
    assert "fivetuple" in browser.title
    wait_until(browser, lambda d: count_text(d) == "0", "the count shows 0 clients")
    assert browser.execute_script(REMOTES_JS) == []

    client = connect(server.port)
    try:
        remote = f"127.0.0.1:{client.getsockname()[1]}"
        wait_until(browser, lambda d: remote in d.execute_script(REMOTES_JS), f"a row for {remote}")
        assert count_text(browser) == "1"
        row = browser.find_element(By.CSS_SELECTOR, "#conns tr[data-conn-id]")
        assert row.get_attribute("data-conn-id").isdigit()
    finally:
        client.close()
    wait_until(browser, lambda d: remote not in d.execute_script(REMOTES_JS), f"{remote} gone")
    wait_until(browser, lambda d: count_text(d) == "0", "the count back to 0")
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_clicking_a_header_sorts_the_table(served: tuple[CliServer, str], browser: Any) -> None:
    server, url = served
    clients = [connect(server.port) for _ in range(3)]
    try:
        browser.get(url + "/")
        ids = wait_until(browser, lambda d: len(row_ids(d)) == 3 and row_ids(d), "3 rows")
        assert ids == sorted(ids)  # by id, ascending, at first
        header = browser.find_element(By.CSS_SELECTOR, 'th[data-key="id"]')
        header.click()  # the sorted column again: descending
        assert row_ids(browser) == sorted(ids, reverse=True)
        assert (
            browser.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').get_attribute("aria-sort")
            == "descending"
        )
    finally:
        for client in clients:
            client.close()


def test_page_shows_an_error_when_the_server_is_gone(
    served: tuple[CliServer, str], browser: Any
) -> None:
    server, url = served
    browser.get(url + "/")
    wait_until(browser, lambda d: count_text(d) == "0", "a first update")
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed()
    server.proc.terminate()
    server.wait()
    wait_until(browser, lambda d: error.is_displayed(), "the error line")
    assert "update failed" in error.text
    assert count_text(browser) == "0"  # the last good numbers stay on screen


CHART_POINTS_JS = (
    "return Object.fromEntries(Array.from(document.querySelectorAll('#charts svg'),"
    " svg => [svg.id, Array.from(svg.querySelectorAll('polyline'),"
    " line => line.getAttribute('points').trim().split(/\\s+/).length)]))"
)


def test_a_gathering_endpoint_shows_the_worker_column_and_draws_charts(
    tmp_path: Path, browser: Any
) -> None:
    """Issue 14: the supervisor's page lists each row's worker and charts the history."""
    with worker_servers(tmp_path, 2) as fleet:
        paths = {label: path for label, (_, path) in fleet.items()}
        with gathering(lambda: paths) as addr:
            clients = [connect(server) for server, _ in fleet.values()]
            try:
                browser.get(f"http://{addr}/")
                workers = "return Array.from(document.querySelectorAll('#conns tr'), r => r.dataset.worker)"
                wait_until(
                    browser,
                    lambda d: sorted(d.execute_script(workers)) == ["0", "1"],
                    "a row per worker",
                )
                header = browser.find_element(By.CSS_SELECTOR, 'th[data-key="worker"]')
                assert header.text == "worker"
                cells = browser.find_elements(By.CSS_SELECTOR, "#conns td.worker")
                assert sorted(cell.text for cell in cells) == ["0", "1"]
                points = wait_until(
                    browser,
                    lambda d: (
                        (p := d.execute_script(CHART_POINTS_JS))
                        and len(p["chart-conns"]) == 2
                        and min(p["chart-conns"]) >= 2
                        and p
                    ),
                    "a line of 2 points or more per worker in the connections chart",
                )
                assert set(points) == {
                    "chart-conns",
                    "chart-accepts",
                    "chart-bytes",
                    "chart-closes",
                }
                assert len(points["chart-bytes"]) == 2  # in and out
                assert "worker 0" in browser.find_element(By.ID, "workers").text
                assert not browser.find_element(By.ID, "error").is_displayed()
            finally:
                for client in clients:
                    client.close()
