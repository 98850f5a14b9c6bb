"""The Prefect UI in a real headless browser: the dashboard, and an activator run page with its task runs.

Drives Debian's ``chromium`` through Debian's ``chromedriver`` (one build, so their versions always
match; ``scripts/bootstrap.sh`` installs both as root). Browser tools' own browser downloads cannot
work here, and Chromium is kept on loopback: no first-run, sync, component or QUIC traffic, and no
host name but the UI's resolves. An activator processes one LATISS visit-detector on the session's
Prefect server first, so the pages have something real to show.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    TaskRunFilter,
    TaskRunFilterName,
)
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from prompt_processing.adapters import prefect_api
from prompt_processing.model import naming
from tests.helpers import wait_for
from tests.test_pipeline import Pipeline, _activator_in_thread, pipeline  # noqa: F401 (a fixture, used by name)

PAGE_TIMEOUT_S = 45.0
# What the Prefect UIs (v1 and v2) show when they cannot reach the API they were given: a toast, or
# v2's whole-page "Unable to connect to Prefect server". Matched at the start of a line of the page.
CONNECT_ERRORS = (
    "Can't connect to Server API",
    "Unable to connect to Prefect server",
    "Failed to connect to Prefect server",
)
NOT_INSTALLED = (
    "Debian's {} is not installed (scripts/bootstrap.sh installs it as root): the Prefect UI check is skipped"
)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")  # fmt: skip
# The run page's tab (v1: <li class="p-tab">; a button with role "tab" elsewhere).
TASK_RUNS_TAB = "//*[(self::li or self::button or @role='tab') and normalize-space(.)='Task Runs']"


@dataclass(frozen=True)
class Browser:
    chromium: str
    chromedriver: str


@pytest.fixture(scope="session")
def browser() -> Browser:
    """Debian's chromium and chromedriver, or a skip (session-scoped: it skips before the stack starts)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None:
        pytest.skip(NOT_INSTALLED.format("chromium"))
    if chromedriver is None:
        pytest.skip(NOT_INSTALLED.format("chromium-driver"))
    return Browser(chromium, chromedriver)


@contextmanager
def headless_chromium(browser: Browser, ui: str, profile_dir: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = browser.chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")  # fresh for every test
    # The UI loads an analytics SDK that calls out to the internet: resolve nothing but the UI's host.
    options.add_argument(f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {urlsplit(ui).hostname}")
    service = Service(browser.chromedriver, log_output=str(profile_dir.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)  # a given driver path: no Selenium Manager
    try:
        yield driver
    finally:
        driver.quit()


def show(driver: WebDriver, url: str, ready: Callable[[WebDriver], Any], what: str, screenshot: Path) -> Any:
    """Open ``url``, then :func:`wait_until` ``ready``."""
    driver.get(url)
    return wait_until(driver, ready, what, screenshot)


def wait_until(driver: WebDriver, ready: Callable[[WebDriver], Any], what: str, screenshot: Path) -> Any:
    """Wait until ``ready`` returns something truthy (returned) or the UI says it cannot reach its API.

    Saves a screenshot either way; a failure's message says where it is.
    """
    connect_error: list[str] = []

    def settled(d: WebDriver) -> Any:
        text = d.find_element(By.TAG_NAME, "body").text
        connect_error[:] = [line for line in text.splitlines() if line.strip().startswith(CONNECT_ERRORS)]
        return connect_error or ready(d)

    wait = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))  # fmt: skip
    try:
        found = wait.until(settled)
    except TimeoutException:
        found = None
    driver.save_screenshot(str(screenshot))
    url = driver.current_url
    assert not connect_error, f"{url}: the UI cannot reach the Prefect API: {connect_error}; screenshot {screenshot}"
    assert found, f"{url}: no {what} within {PAGE_TIMEOUT_S} s; screenshot {screenshot}"
    return found


def dashboard_counts_flow_runs(driver: WebDriver) -> WebElement | None:
    """The dashboard's "Flow Runs" card once it shows its per-state counts: both came from the API.

    Prefect's dashboard shows its cards only after the API listed at least one flow run (before,
    "Run a task or flow to get started"), and the counts only once the API counted them. Its
    "<n> total" is no proof: the dashboard's window ends at the start of the current minute, so
    the activator run of a few seconds ago is not counted yet.
    """
    title = "//*[@data-slot='card-title'][normalize-space()='Flow Runs']"
    for card in driver.find_elements(By.XPATH, f"//*[@data-slot='card'][.{title}]"):
        if re.search(r"^\d+$", card.text, re.MULTILINE):
            return card
    return None


def task_run_listed(name: str, task_run_id: str) -> Callable[[WebDriver], WebElement | None]:
    """The link to task run ``task_run_id`` in the run page's task-run list, once it shows ``name``."""

    def listed(driver: WebDriver) -> WebElement | None:
        for link in driver.find_elements(By.CSS_SELECTOR, f"a[href$='/runs/task-run/{task_run_id}']"):
            if link.text.strip() == name:
                return link
        return None

    return listed


def activator_run_of(task_name: str) -> tuple[str, str]:
    """(activator flow run id, task run id) of the visit-detector task run ``task_name``, once final."""
    by_name = TaskRunFilter(name=TaskRunFilterName(any_=[task_name]))
    activators = FlowFilter(name=FlowFilterName(any_=[naming.ACTIVATOR_FLOW]))
    with get_client(sync_client=True) as client:  # task-run states arrive through events: wait for them

        def final() -> bool:
            runs = client.read_task_runs(task_run_filter=by_name)
            return len(runs) == 1 and runs[0].state is not None and runs[0].state.is_final()

        wait_for(final, what=f"task run {task_name} in a final state")
        (task_run,) = client.read_task_runs(task_run_filter=by_name)
        (flow_run,) = client.read_flow_runs(flow_filter=activators, task_run_filter=by_name)
    assert task_run.flow_run_id == flow_run.id
    return str(flow_run.id), str(task_run.id)


@pytest.mark.timeout(240)
def test_dashboard_and_an_activator_run_page_show_the_visit_detector(
    browser: Browser,
    pipeline: Pipeline,
    tmp_path: Path,
) -> None:
    prefect_api.deploy_all(pipeline.settings, Path.cwd())  # the rerun deployment, for the artifact's link
    group = f"ui-{uuid.uuid4().hex[:8]}"
    body = pipeline.announce(group)
    pipeline.land(body)
    wait_for(lambda: pipeline.redis.exists(naming.presence_key("LATISS", group, 0, 0)) == 1, what="presence")
    thread, counts = _activator_in_thread()
    thread.join(60)
    assert counts.get("succeeded") == 1, counts
    task_name = f"LATISS-{group}-det000"
    run_id, task_run_id = activator_run_of(task_name)

    ui = pipeline.settings.prefect.ui
    profile = tmp_path / "chromium-profile"
    with headless_chromium(browser, ui, profile) as driver:
        show(driver, ui, dashboard_counts_flow_runs, "dashboard with flow-run counts", tmp_path / "ui-dashboard.png")

        run_page = tmp_path / "ui-run.png"
        tab_shown = expected_conditions.element_to_be_clickable((By.XPATH, TASK_RUNS_TAB))
        tab = show(driver, f"{ui}/runs/flow-run/{run_id}", tab_shown, "Task Runs tab", run_page)
        tab.click()
        link = wait_until(driver, task_run_listed(task_name, task_run_id), f"task run {task_name} listed", run_page)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        driver.save_screenshot(str(run_page))

        # The visit-detector's artifact links to the rerun deployment's run form, pre-filled for it.
        rerun_form = rerun_link_of(group)
        form_shot = tmp_path / "ui-rerun-form.png"
        show(driver, rerun_form, field_holding(group), f"the run form with group {group}", form_shot)
        assert field_holding("0")(driver) is not None, f"detector not pre-filled; screenshot {form_shot}"


def rerun_link_of(group: str) -> str:
    """The rerun link in the latest version of the visit-detector's artifact."""
    key = naming.visit_artifact_key("LATISS", group, 0)
    with get_client(sync_client=True) as client:

        def linked() -> str | None:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            match = re.search(r"\[Rerun it\]\((\S+)\)", str(found[-1].data)) if found else None
            return match[1] if match else None

        wait_for(lambda: linked() is not None, what=f"the rerun link in artifact {key}")
        link = linked()
    assert link is not None
    return link


def field_holding(value: str) -> Callable[[WebDriver], WebElement | None]:
    """A text input or textarea of the page whose value is ``value``."""

    def holding(driver: WebDriver) -> WebElement | None:
        for field in driver.find_elements(By.CSS_SELECTOR, "input, textarea"):
            if field.get_attribute("value") == value:
                return field
        return None

    return holding

