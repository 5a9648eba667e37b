"""A prompt editor changes, diffs, previews, publishes and rolls back the demo prompt in a
real browser, against the platform served as in production and seeded by `seed_demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import launch_chromium, save_screenshot, serve_platform, stop_platform

pytestmark = pytest.mark.browser

SEED = "from django.core.management import call_command; call_command('seed_demo', verbosity=0)"
LIVE = (
    "from agents_app.models import PromptVersion; "
    "v = PromptVersion.objects.get(agent__slug='demo', status='published'); "
    "result = {'number': v.number, 'instructions': v.instructions, 'based_on': v.based_on.number if v.based_on else None}"
)


@pytest.fixture
def site(tmp_path: Path) -> Any:
    served = serve_platform(tmp_path, name="admin", seed=SEED)
    yield served
    stop_platform(served)


def test_an_editor_publishes_a_change_and_rolls_it_back(site, chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(site.base_url + "/admin/login/")
            demo = site.orm("from agents_app.models import Agent; result = Agent.objects.get(slug='demo').pk")
            versions = site.base_url + "/admin/agents_app/promptversion/"
            page.fill("#id_username", "editor")
            page.fill("#id_password", "voice-demo")
            page.click("input[type=submit]")

            page.goto(f"{versions}?agent__id__exact={demo}")  # the demo agent's versions only
            page.click("text=v1")
            assert "v1 is live" in page.inner_text("#vp-status")
            assert page.query_selector("#id_instructions") is None  # read-only: no input box

            page.click("#vp-new-draft")
            page.click("#vp-confirm")
            text = page.input_value("#id_instructions")
            page.fill("#id_instructions", text + "Always thank the caller by name.\n")
            page.fill("#id_change_note", "Thank callers")
            page.click("input[name=_continue]")
            assert "Draft v2" in page.inner_text("#vp-status")

            page.click("text=Diff against live")
            assert "Always thank the caller by name." in page.inner_text("#diff-instructions table.diff .diff_add")
            save_screenshot(page, "admin-prompt-diff")

            page.goto(page.url.replace("/diff/", "/preview/") + "?company=Globex")
            assert "You are Robin, the voice assistant of Globex." in page.inner_text("#vp-instructions")

            page.goto(page.url.split("/preview/")[0] + "/change/")
            page.click("#vp-publish")
            page.click("#vp-confirm")
            assert "v2 is now the live prompt" in page.inner_text("ul.messagelist").lower()  # CSS capitalises
            live = site.orm(LIVE)
            assert live["number"] == 2 and live["instructions"].endswith("Always thank the caller by name.")
            assert "\r" not in live["instructions"]  # the browser's CRLF is stored as LF

            page.goto(f"{versions}?agent__id__exact={demo}")  # the demo agent's versions only
            page.click("text=v1")
            page.click("#vp-rollback")
            page.fill("#id_change_note", "Back to the original")
            page.click("#vp-confirm")
            assert "Rolled back: v3 (a copy of v1)" in page.inner_text("ul.messagelist")
            live = site.orm(LIVE)
            assert live["number"] == 3 and live["based_on"] == 1
            assert "Always thank the caller" not in live["instructions"]
        except Exception:
            save_screenshot(page, "admin-prompt-failure")
            raise
        finally:
            browser.close()
