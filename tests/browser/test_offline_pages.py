"""No page a person uses asks anything of a host outside the deployment.

A real Chromium visits every page of the product (logins, dashboard, a session's page,
the call page, the admin pages for agents, prompts and tools, the API docs) on the
platform served on loopback. Every request the pages make is recorded, and any to a
host other than the platform's is refused (so nothing waits on a network this machine
does not have) and fails the test. The API docs must also render: Swagger UI shows the
API's title and its operations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import launch_chromium, save_screenshot, serve_platform, stop_platform

pytestmark = pytest.mark.browser

SEED = (
    "from django.core.management import call_command; call_command('seed_demo', verbosity=0)\n"
    "from agents_app.models import Agent\n"
    "from sessions_app.services import session_create\n"
    "from django.contrib.auth.models import User\n"
    "session_create(agent_slug='demo', user=User.objects.get(username='staff'), caller_id='offline-pages')\n"
)
IDS = (
    "from agents_app.models import Agent, PromptVersion\n"
    "from sessions_app.models import VoiceSession\n"
    "from tools_app.models import ToolDefinition\n"
    "result = {'agent': Agent.objects.get(slug='demo').pk,\n"
    "          'prompt': PromptVersion.objects.filter(agent__slug='demo').first().pk,\n"
    "          'tool': ToolDefinition.objects.order_by('name').first().pk,\n"
    "          'session': str(VoiceSession.objects.first().id)}\n"
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def site(tmp_path: Path) -> Any:
    served = serve_platform(tmp_path, name="offline", seed=SEED)
    yield served
    stop_platform(served)


def _sign_in(page: Any, url: str, username: str) -> None:
    page.goto(url)
    page.fill("#id_username", username)
    page.fill("#id_password", "voice-demo")
    page.click("[type=submit]")
    page.wait_for_load_state("networkidle")


def test_every_page_loads_only_from_the_deployment_and_the_api_docs_render(site, chromium_path) -> None:
    from playwright.sync_api import sync_playwright

    ids = site.orm(IDS)
    outside: list[str] = []
    visited: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS:
            outside.append(url)
            route.abort()
        else:
            route.continue_()

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", guard)
        page = context.new_page()

        def visit(path: str) -> None:
            response = page.goto(site.base_url + path)
            page.wait_for_load_state("networkidle")
            visited.append(path)
            assert response is not None and response.status == 200, (path, response and response.status)

        try:
            for path in ("/login/", "/dashboard/login/", "/admin/login/"):
                visit(path)

            _sign_in(page, site.base_url + "/dashboard/login/?next=/dashboard/", "staff")
            visit("/dashboard/")
            visit(f"/dashboard/sessions/{ids['session']}/")
            visit("/call/")

            context.clear_cookies()  # sign out (Django's logout takes a POST) and in as the admin
            _sign_in(page, site.base_url + "/admin/login/?next=/admin/", "admin")
            for path in (
                "/admin/",
                "/admin/agents_app/agent/",
                f"/admin/agents_app/agent/{ids['agent']}/change/",
                "/admin/agents_app/promptversion/",
                f"/admin/agents_app/promptversion/{ids['prompt']}/change/",
                "/admin/tools_app/tooldefinition/",
                f"/admin/tools_app/tooldefinition/{ids['tool']}/change/",
                "/admin/tools_app/tooldefinition/add/",
            ):
                visit(path)

            visit("/api/v1/docs")
            assert outside == [], f"pages asked hosts outside the deployment: {sorted(set(outside))}"
            page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
            assert "Voice platform API" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path", timeout=15_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
            assert any("/sessions" in p for p in paths), paths
            save_screenshot(page, "api-docs-offline")
        except Exception:
            save_screenshot(page, "offline-pages-failure")
            raise
        finally:
            browser.close()

    assert outside == [], f"pages asked hosts outside the deployment: {sorted(set(outside))}"
    assert len(visited) == 15
