"""The dashboard in a real browser: headless Chromium (Debian's) driven by Selenium.

The test command installs ``chromium`` and ``chromium-driver`` (see the
Makefile); without them this test fails and says so, it never skips. It
walks what an operator does: sign in, filter the list, open an instance,
read its timeline, raise the receipt it waits for, and see it complete.
A screenshot of the instance page is left in the test's directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait

from durable_fx import DurableClient, OrchestrationStatus
from tests.support.dashboard import KEY

# The fixtures: a worker on the module's SQLite file and the dashboard process on it.
from tests.support.dashboard import client as client
from tests.support.dashboard import dashboard as dashboard
from tests.support.dashboard import store_url as store_url
from tests.support.instances import wait_until

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: `make test` installs Debian's chromium and "
            "chromium-driver (apt-get; it needs root or a package manager that can)"
        )
    profile = tempfile.mkdtemp(prefix="dfx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,900",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_an_operator_finds_an_email_reads_its_timeline_and_delivers_its_receipt(
    browser: webdriver.Chrome,
    dashboard: str,
    client: DurableClient,
    tmp_path: Path,
) -> None:
    iid = client.start("deliver", "mei@example.com", instance_id="browser-1")
    wait_until(lambda: (s := client.get(iid)) and s.custom_status and s.custom_status.get("stage"))
    wait = WebDriverWait(browser, 20)

    browser.get(f"{dashboard}/instances")
    wait.until(ready.presence_of_element_located((By.NAME, "key"))).send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "form.filters")))

    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("RUNNING")
    browser.find_element(By.NAME, "prefix").send_keys("browser-")
    row = wait.until(ready.element_to_be_clickable((By.LINK_TEXT, iid)))
    listed = browser.find_elements(By.CSS_SELECTOR, "#rows tr td:first-child a")
    assert [a.text for a in listed] == [iid]  # the filters replaced the rows in place
    row.click()

    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "ol.gantt")))
    bars = {
        (bar.get_attribute("class") or "").removeprefix("bar ")
        for bar in browser.find_elements(By.CSS_SELECTOR, "ol.gantt li")
    }
    assert {"activity completed", "timer fired", "wait running"} <= bars
    fill = browser.find_element(By.CSS_SELECTOR, ".bar.activity .fill")
    assert fill.size["width"] > 0 and "awaiting receipt" in browser.page_source
    browser.save_screenshot(str(tmp_path / "instance.png"))

    browser.find_element(By.NAME, "name").send_keys("Receipt")
    browser.find_element(By.NAME, "data").send_keys('{"status": "delivered"}')
    browser.find_element(By.CSS_SELECTOR, ".actions form button").click()
    browser.switch_to.alert.accept()  # hx-confirm
    wait.until(ready.text_to_be_present_in_element((By.ID, "outcome"), "raised Receipt"))
    assert client.wait(iid, timeout=20).status is OrchestrationStatus.COMPLETED

    browser.refresh()
    wait.until(ready.text_to_be_present_in_element((By.CSS_SELECTOR, "h1 .status"), "COMPLETED"))
    assert "delivered" in browser.find_element(By.CSS_SELECTOR, ".payloads").text
    assert (tmp_path / "instance.png").stat().st_size > 10_000


def test_terminate_and_purge_from_the_page(
    browser: webdriver.Chrome,
    dashboard: str,
    client: DurableClient,
) -> None:
    iid = client.start("idle", None, instance_id="browser-2")
    wait_until(lambda: (s := client.get(iid)) and s.status is OrchestrationStatus.RUNNING)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{dashboard}/instances/{iid}")
    if browser.find_elements(By.NAME, "key"):  # a new session of this browser: sign in
        browser.find_element(By.NAME, "key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        browser.get(f"{dashboard}/instances/{iid}")
    wait.until(ready.element_to_be_clickable((By.XPATH, "//button[text()='Terminate']"))).click()
    browser.switch_to.alert.accept()
    wait.until(ready.text_to_be_present_in_element((By.ID, "outcome"), "terminated"))
    assert client.wait(iid, timeout=20).status is OrchestrationStatus.TERMINATED
    browser.find_element(By.XPATH, "//button[text()='Purge']").click()
    browser.switch_to.alert.accept()
    wait.until(ready.text_to_be_present_in_element((By.ID, "outcome"), "purged"))
    assert client.get(iid) is None
