"""The Temporal Web UI tells an operator the story of a provisioning run: headless Chromium (Debian's package,
installed by scripts/install-system-deps.sh) opens the embedded stack's UI and reads what a person would see.

Every page is saved as a full-page screenshot under test-artifacts/temporal-ui/ (after the test, pass or fail), so
a failure can be looked at and a success shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from provisioner.contracts import (
    PROVISIONING_STEPS,
    SEARCH_ATTRIBUTE_SLUG,
    STEP_TITLES,
    StepName,
    project_workflow_id,
)
from provisioner.settings import PROJECT_ROOT
from provisioner.stack import EmbeddedStack
from tests.ui.provisioning import provision, unique_slug
from workflows.project_init import (
    APPLY_FLUX_RESOURCES,
    CHECK_FLUX_READINESS,
    CREATE_REPOSITORY,
    PUSH_TEMPLATE,
    UPSERT_PROJECT_RECORD,
    VALIDATE_TEMPLATE,
)

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "temporal-ui"
# Flags for a browser that must not reach out anywhere: no sandbox (root in CI), no GPU, no phoning home; and
# shared memory in /tmp, since containers often give /dev/shm only 64 MB.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
VIEWPORT: ViewportSize = {"width": 1600, "height": 1400}
# The UI is a single-page app that fetches everything after load; generous, but far below the test timeout.
CONTENT_TIMEOUT_MS = 20_000

# The activity each step runs, as the event history and the timeline name it.
STEP_ACTIVITIES: dict[StepName, str] = {
    StepName.VALIDATE_TEMPLATE: VALIDATE_TEMPLATE,
    StepName.CREATE_REPOSITORY: CREATE_REPOSITORY,
    StepName.PUSH_TEMPLATE: PUSH_TEMPLATE,
    StepName.PERSIST_RECORD: UPSERT_PROJECT_RECORD,
    StepName.APPLY_FLUX_RESOURCES: APPLY_FLUX_RESOURCES,
    StepName.AWAIT_READY: CHECK_FLUX_READINESS,
    StepName.FINALIZE_RECORD: UPSERT_PROJECT_RECORD,
}


@dataclass(frozen=True)
class ProvisionedRuns:
    slug: str
    other_slug: str  # provisioned too, so that a filtered list has something to leave out

    @property
    def workflow_id(self) -> str:
        return project_workflow_id(self.slug)


def chromium_executable() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's `chromium` is not installed: run scripts/install-system-deps.sh (as root)")
    return found


@pytest.fixture(scope="module")
async def runs(ui_stack: EmbeddedStack) -> ProvisionedRuns:
    runs = ProvisionedRuns(slug=unique_slug("ui-shop"), other_slug=unique_slug("ui-other"))
    await asyncio.gather(provision(ui_stack, runs.slug), provision(ui_stack, runs.other_slug))
    return runs


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # The playwright wheel ships its driver; the browser is the system's, so nothing is ever downloaded.
    expect.set_options(timeout=CONTENT_TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_executable(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(CONTENT_TIMEOUT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


@asynccontextmanager
async def screenshot_afterwards(page: Page, name: str) -> AsyncIterator[Path]:
    """Save the page as it is when the block ends, whether its assertions held or not."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    try:
        yield path
    except BaseException:
        with contextlib.suppress(PlaywrightError):  # the assertion's error is the one to report
            await page.screenshot(path=str(path), full_page=True)
        raise
    await page.screenshot(path=str(path), full_page=True)


async def open_run(page: Page, stack: EmbeddedStack, workflow_id: str, tab: str | None = None) -> None:
    """Open the run's page (the UI redirects to the latest run's timeline) and wait until it has loaded."""
    await page.goto(stack.workflow_url(workflow_id), wait_until="domcontentloaded")
    heading = page.get_by_test_id("workflow-id-heading")
    await expect(heading.get_by_text(workflow_id, exact=True)).to_be_visible()
    if tab is not None:
        await page.get_by_role("tab", name=tab).click()


async def test_the_run_page_shows_the_workflow_and_every_step_on_the_timeline(
    page: Page, ui_stack: EmbeddedStack, runs: ProvisionedRuns
) -> None:
    async with screenshot_afterwards(page, "workflow-timeline"):
        await open_run(page, ui_stack, runs.workflow_id)
        await expect(page.get_by_test_id("execution-status")).to_have_text("Completed", ignore_case=True)
        await expect(page.get_by_role("link", name="ProjectInitWorkflow", exact=True)).to_be_visible()
        await expect(page.get_by_role("link", name=ui_stack.settings.task_queue, exact=True)).to_be_visible()
        # Each activity is drawn as "<activity type> • <step title>": the summary the workflow gives each step.
        for step in PROVISIONING_STEPS:
            label = f"{STEP_ACTIVITIES[step]} • {STEP_TITLES[step]}"
            # `.first`: waiting for Ready may take several checks, each drawn as its own activity.
            await expect(page.get_by_text(label, exact=True).first).to_be_visible()
        # The input is the project's spec, the result says Flux reported Ready.
        await expect(page.get_by_text(f'"slug": "{runs.slug}"').first).to_be_visible()
        await expect(page.get_by_text('"status": "ready"').first).to_be_visible()


async def test_the_event_history_names_each_activity_and_its_step(
    page: Page, ui_stack: EmbeddedStack, runs: ProvisionedRuns
) -> None:
    async with screenshot_afterwards(page, "event-history"):
        await open_run(page, ui_stack, runs.workflow_id, tab="Event History")
        await expect(page.get_by_text("Workflow Execution Completed")).to_be_visible()
        for step in PROVISIONING_STEPS:
            await expect(page.get_by_text(STEP_TITLES[step], exact=True).first).to_be_visible()
        for activity in sorted(set(STEP_ACTIVITIES.values())):
            await expect(page.get_by_text(activity, exact=True).first).to_be_visible()
        # Two steps run the same activity; the history tells them apart by their summaries. (`.first`: the UI may
        # draw the step's scheduled and its completed event each as a row with both.)
        for step in (StepName.PERSIST_RECORD, StepName.FINALIZE_RECORD):
            scheduled = page.get_by_role("row").filter(has_text=STEP_TITLES[step])
            await expect(scheduled.get_by_text(UPSERT_PROJECT_RECORD, exact=True).first).to_be_visible()


async def test_the_user_metadata_shows_the_summary_details_and_current_details(
    page: Page, ui_stack: EmbeddedStack, runs: ProvisionedRuns
) -> None:
    async with screenshot_afterwards(page, "user-metadata"):
        await open_run(page, ui_stack, runs.workflow_id, tab="User Metadata")
        # Markdown is rendered by the UI in sandboxed frames, one per field.
        summary = page.frame_locator("#user-metadata-summary")
        await expect(summary.get_by_text(f"Create {runs.slug} from template web-service")).to_be_visible()
        details = page.frame_locator("iframe[id^='user-metadata-detail']")
        await expect(details.get_by_text(f"Project {runs.slug}", exact=True)).to_be_visible()
        await expect(details.get_by_text("environment", exact=False)).to_be_visible()
        current = page.frame_locator("#user-metadata-current-details")
        await expect(current.get_by_text("ready", exact=True)).to_be_visible()
        await expect(current.get_by_text("(create): Flux reports Ready: applied main@sha1:")).to_be_visible()


async def test_the_workflow_list_filtered_by_project_slug_finds_only_that_project(
    page: Page, ui_stack: EmbeddedStack, runs: ProvisionedRuns
) -> None:
    query = urllib.parse.quote(f'{SEARCH_ATTRIBUTE_SLUG.name}="{runs.slug}"')
    url = f"{ui_stack.ui_url}/namespaces/{ui_stack.settings.temporal_namespace}/workflows?query={query}"
    async with screenshot_afterwards(page, "workflow-list-by-slug"):
        await page.goto(url, wait_until="domcontentloaded")
        rows = page.get_by_test_id("workflows-summary-configurable-table-row")
        await expect(rows).to_have_count(1)
        await expect(rows.get_by_role("link", name=runs.workflow_id, exact=True)).to_be_visible()
        await expect(rows.get_by_role("link", name="ProjectInitWorkflow", exact=True)).to_be_visible()
        await expect(rows.get_by_text("Completed", exact=True)).to_be_visible()
        await expect(page.get_by_text(project_workflow_id(runs.other_slug))).to_have_count(0)
