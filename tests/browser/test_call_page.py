"""The browser call page (/call/): the view, and the page in Debian's Chromium.

The browser tests serve the real ASGI app as in production (a subprocess on its own database)
and drive Chromium with fake media devices. There is no LiveKit server here, so
`LIVEKIT_URL` points at a stand-in on loopback (`FakeLiveKit`) that answers only the
server API calls the platform makes (agent dispatch, room delete) and gives no answer at
all to the browser's signalling connection: everything up to the media connection is
real, and the page must report that the connection failed.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import override_settings
from django.urls import resolve

from agents_app.models import Agent
from agents_app.services import prompt_draft_create
from tests.browser.conftest import (
    ServedPlatform,
    free_port,
    launch_chromium,
    save_screenshot,
    serve_platform,
    stop_platform,
)

BASE_DIR = Path(__file__).resolve().parents[2]
VENDOR_DIR = BASE_DIR / "static" / "vendor" / "livekit-client"
# On top of the shared flags (tests/browser/conftest.py): a fake microphone, auto-allowed.
FAKE_MEDIA_FLAGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
LIVEKIT_KEY = "browser-test-key"
LIVEKIT_SECRET = "browser-test-secret-0123456789abcdefghijklmnop"
USERNAME, PASSWORD = "caller", "caller-pass-123"


# --------------------------------------------------------------------------------------
# The view (Django test client)
# --------------------------------------------------------------------------------------


def _page_config(response) -> dict[str, Any]:
    match = re.search(rb'<script id="call-config" type="application/json">(.*?)</script>', response.content, re.S)
    assert match, "the page carries its configuration as a json_script"
    return json.loads(match.group(1))


def test_it_sends_anonymous_visitors_to_the_login_page(client, db) -> None:
    response = client.get("/call/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/call/")


@override_settings(LIVEKIT_URL="wss://livekit.example.com")
def test_it_lists_only_agents_that_can_take_calls(client, outsider_user, agent) -> None:
    retired = Agent.objects.create(slug="retired", name="Retired agent", active=False)
    unpublished = Agent.objects.create(slug="draft-only", name="Draft-only agent")
    prompt_draft_create(agent=unpublished, instructions="Not yet.", greeting="", variables={}, change_note="draft")
    client.force_login(outsider_user)  # any logged-in user may call; staff is not required

    response = client.get("/call/")

    assert response.status_code == 200
    options = re.findall(rb'<option value="([^"]+)"', response.content)
    assert options == [agent.slug.encode()]
    assert retired.slug.encode() not in options
    assert b"/static/vendor/livekit-client/livekit-client.umd.js" in response.content


@override_settings(LIVEKIT_URL="wss://livekit.example.com")
def test_its_endpoints_are_the_browser_api_routes(client, outsider_user, agent) -> None:
    client.force_login(outsider_user)
    config = _page_config(client.get("/call/"))

    assert config["livekitUrl"] == "wss://livekit.example.com"
    assert config["localMode"] is False
    assert config["csrfToken"]
    session_id = str(uuid.uuid4())
    for name, path in config["endpoints"].items():
        match = resolve(path.replace("{id}", session_id).replace("{index}", "1"))
        assert match.url_name, f"the {name} endpoint {path} is not routed"
        assert path.startswith("/api/v1/browser/")


@override_settings(LIVEKIT_URL="")
def test_local_mode_explains_that_a_livekit_server_is_needed(client, outsider_user, agent) -> None:
    client.force_login(outsider_user)
    response = client.get("/call/")

    assert response.status_code == 200
    assert b"A LiveKit server is needed for browser calls" in response.content
    assert b'href="/dashboard/"' in response.content
    assert b"livekit-client.umd.js" not in response.content  # nothing to connect to
    assert b'id="start"' not in response.content


@override_settings(LIVEKIT_URL="wss://livekit.example.com")
def test_it_says_when_no_agent_can_take_calls(client, outsider_user) -> None:
    client.force_login(outsider_user)
    response = client.get("/call/")
    assert b"No agent can take calls yet" in response.content
    assert b'id="start"' not in response.content


def test_the_vendored_livekit_client_notes_its_version_and_licence() -> None:
    version_note = (VENDOR_DIR / "VERSION").read_text()
    bundle = (VENDOR_DIR / "livekit-client.umd.js").read_bytes()
    match = re.search(r"livekit-client (\d+\.\d+\.\d+)", version_note)
    assert match and match.group(1).startswith("2.")
    assert "Apache" in (VENDOR_DIR / "LICENSE").read_text()
    import hashlib

    assert hashlib.sha256(bundle).hexdigest() in version_note, "VERSION records the sha256 of the vendored file"


# --------------------------------------------------------------------------------------
# The real app in a real browser
# --------------------------------------------------------------------------------------


@dataclass
class FakeLiveKit:
    """A stand-in LiveKit server: answers the Twirp server API, never the browser.

    `answer_api=False` makes it refuse the server API too (a LiveKit server that is down).
    """

    port: int = field(default_factory=free_port)
    answer_api: bool = True
    api_calls: list[tuple[str, bytes]] = field(default_factory=list)
    browser_requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not (fake.answer_api and self.path.startswith("/twirp/")):
                    self.close_connection = True  # no answer: the connection just closes
                    return
                fake.api_calls.append((self.path, body))
                reply = b""
                if self.path.endswith("/CreateDispatch"):
                    from livekit.protocol.agent_dispatch import AgentDispatch, CreateAgentDispatchRequest

                    request = CreateAgentDispatchRequest.FromString(body)
                    reply = AgentDispatch(
                        id="AD_" + uuid.uuid4().hex[:12],
                        agent_name=request.agent_name,
                        room=request.room,
                        metadata=request.metadata,
                    ).SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                # The browser's signalling websocket and its /rtc/validate probe: no answer.
                fake.browser_requests.append(self.path)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SEED = f"""
from django.contrib.auth.models import User
from agents_app.models import Agent
from agents_app.services import prompt_draft_create, prompt_publish
User.objects.create_user({USERNAME!r}, "caller@example.com", {PASSWORD!r}, is_staff=True)
for slug, name in (("support", "Support agent"), ("sales", "Sales agent")):
    agent = Agent.objects.create(slug=slug, name=name)
    version = prompt_draft_create(agent=agent, instructions="Be brief.", greeting="Hello.", variables={{}}, change_note="first")
    prompt_publish(version=version)
"""


@pytest.fixture(scope="module")
def fake_livekit() -> Iterator[FakeLiveKit]:
    fake = FakeLiveKit()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def livekit_site(tmp_path_factory, fake_livekit) -> Iterator[ServedPlatform]:
    env = {
        "LIVEKIT_URL": fake_livekit.url,
        "LIVEKIT_API_KEY": LIVEKIT_KEY,
        "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
        "CALL_AGENT_JOIN_TIMEOUT_SECONDS": "2",
    }
    site = serve_platform(tmp_path_factory.mktemp("callpage"), name="callpage", seed=SEED, env_extra=env)
    yield site
    stop_platform(site)


@pytest.fixture(scope="module")
def local_site(tmp_path_factory) -> Iterator[ServedPlatform]:
    site = serve_platform(tmp_path_factory.mktemp("callpage-local"), name="callpage_local", seed=SEED)
    yield site
    stop_platform(site)


@pytest.fixture(scope="module")
def browser(chromium_path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path, FAKE_MEDIA_FLAGS)
        yield browser
        browser.close()


@dataclass
class PageRun:
    """A logged-in page plus everything it did: console errors, requests, websockets."""

    page: Any
    site: ServedPlatform
    errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)

    def api_calls(self, suffix: str) -> list[Any]:
        return [r for r in self.requests if r.method == "POST" and urlsplit(r.url).path.endswith(suffix)]


def _open_call_page(browser, site: ServedPlatform, request: pytest.FixtureRequest) -> Iterator[PageRun]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    run = PageRun(page=page, site=site)
    page.on(
        "console",
        lambda msg: (
            run.errors.append(f"console: {msg.text} at {msg.location.get('url')}") if msg.type == "error" else None
        ),
    )
    page.on("pageerror", lambda exc: run.errors.append(f"pageerror: {exc}"))
    page.on("request", lambda req: run.requests.append(req))
    page.on("websocket", lambda ws: run.websockets.append(ws.url))

    page.goto(site.base_url + "/call/")
    assert "/login/" in page.url, "the call page requires a login"
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site.base_url + "/call/")
    # Record the call page on its own (the admin login page is not under test here).
    run.errors.clear()
    run.requests.clear()
    page.goto(site.base_url + "/call/")
    yield run
    save_screenshot(page, f"call-page-{request.node.name}")
    context.close()


@pytest.fixture
def call_page(browser, livekit_site, request) -> Iterator[PageRun]:
    yield from _open_call_page(browser, livekit_site, request)


@pytest.fixture
def local_call_page(browser, local_site, request) -> Iterator[PageRun]:
    yield from _open_call_page(browser, local_site, request)


def _start_call(run: PageRun, agent: str = "support") -> dict[str, Any]:
    page = run.page
    page.select_option("#agent", agent)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/api/v1/browser/sessions") as created:
        page.click("#start")
    response = created.value
    assert response.status == 201, response.text()
    return response.json()


def _claims(token: str) -> dict[str, Any]:
    """The JWT's claims (unverified: the page never verifies tokens either)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _wait_for_connect_failure(run: PageRun) -> str:
    page = run.page
    page.wait_for_selector("#notice[data-kind=error]", timeout=60_000)
    return page.inner_text("#notice")


@pytest.mark.browser
def test_the_page_loads_livekit_client_from_our_static_files_without_errors(call_page: PageRun) -> None:
    page = call_page.page
    page.wait_for_load_state("networkidle")

    scripts = [r.url for r in call_page.requests if r.resource_type == "script"]
    assert any(urlsplit(u).path == "/static/vendor/livekit-client/livekit-client.umd.js" for u in scripts)
    origin = urlsplit(page.url).netloc
    assert all(urlsplit(r.url).netloc == origin for r in call_page.requests), "nothing is loaded from another host"
    vendored = re.search(r"livekit-client (\S+)", (VENDOR_DIR / "VERSION").read_text()).group(1)
    assert page.evaluate("window.LivekitClient.version") == vendored
    assert call_page.errors == []
    assert page.inner_text("#conn") == "Not connected"
    assert page.is_enabled("#start") and page.is_disabled("#interrupt") and page.is_disabled("#end")
    assert not page.is_visible("#rejoin") and not page.is_visible("#audio-unlock")
    assert not page.is_visible("#notice")


@pytest.mark.browser
def test_starting_a_call_gets_a_token_from_the_same_origin_api_and_dials_the_configured_livekit_url(
    call_page: PageRun, fake_livekit: FakeLiveKit
) -> None:
    grant = _start_call(call_page)

    create = call_page.api_calls("/api/v1/browser/sessions")[0]
    assert urlsplit(create.url).netloc == urlsplit(call_page.page.url).netloc
    assert create.headers.get("x-csrftoken"), "the session-authenticated API needs the CSRF header"
    assert "authorization" not in create.headers, "no API key in the browser"
    assert json.loads(create.post_data) == {"agent": "support", "metadata": {}}
    assert grant["url"] == fake_livekit.url and grant["token"] and grant["session_id"]

    message = _wait_for_connect_failure(call_page)

    assert f"Could not connect to the LiveKit server at {fake_livekit.url}" in message
    assert call_page.page.inner_text("#conn") == "Connection failed"
    assert any(u.startswith(fake_livekit.url + "/rtc") for u in call_page.websockets), call_page.websockets
    assert any(p.startswith("/rtc") for p in fake_livekit.browser_requests), "the browser reached the configured server"
    dispatched = [path for path, _ in fake_livekit.api_calls if path.endswith("/CreateDispatch")]
    assert dispatched, "the platform dispatched the agent through the LiveKit server API"
    # The session stays usable: the controls that go through the API are available.
    assert call_page.page.is_enabled("#interrupt") and call_page.page.is_enabled("#end")
    assert call_page.page.is_visible("#rejoin")
    assert not call_page.page.is_visible("#audio-unlock"), "no audio to unlock without a room"


@pytest.mark.browser
def test_interrupt_and_end_fall_back_to_the_api_when_the_agent_is_unreachable(call_page: PageRun) -> None:
    page = call_page.page
    grant = _start_call(call_page)
    _wait_for_connect_failure(call_page)
    session_id = grant["session_id"]

    with page.expect_response(f"**/api/v1/browser/sessions/{session_id}/interrupt") as interrupted:
        page.click("#interrupt")
    assert interrupted.value.status == 202, interrupted.value.text()
    page.wait_for_selector("#notice:has-text('Interrupt sent through the platform')")
    events = call_page.site.orm(
        f"from sessions_app.models import SessionEvent\n"
        f"result = list(SessionEvent.objects.filter(session_id='{session_id}').values_list('type', 'payload'))"
    )
    assert ["interrupt.requested", {"source": "client"}] in events, events

    with page.expect_response(f"**/api/v1/browser/sessions/{session_id}/end") as ended:
        page.click("#end")
    assert ended.value.status == 200, ended.value.text()
    page.wait_for_selector("#notice:has-text('Call ended.')")
    assert page.inner_text("#conn") == "Not connected"
    assert page.is_enabled("#start") and page.is_disabled("#end") and page.is_disabled("#interrupt")
    state = call_page.site.orm(
        f"from sessions_app.models import VoiceSession\nresult = VoiceSession.objects.get(pk='{session_id}').state"
    )
    assert state == "ended"


@pytest.mark.browser
def test_rejoin_gets_a_fresh_token_for_the_same_room(call_page: PageRun, fake_livekit: FakeLiveKit) -> None:
    page = call_page.page
    grant = _start_call(call_page)
    _wait_for_connect_failure(call_page)
    attempts_before = len(call_page.websockets)

    with page.expect_response(f"**/api/v1/browser/sessions/{grant['session_id']}/reconnect") as rejoined:
        page.click("#rejoin")
    fresh = rejoined.value.json()

    assert rejoined.value.status == 200
    assert fresh["room"] == grant["room"] and fresh["session_id"] == grant["session_id"]
    old_claims, new_claims = _claims(grant["token"]), _claims(fresh["token"])
    assert new_claims["video"]["room"] == grant["room"]
    assert new_claims["exp"] >= old_claims["exp"], "the new token lives at least as long"
    page.wait_for_function("document.querySelector('#conn').textContent === 'Connection failed'", timeout=60_000)
    page.wait_for_selector("#notice[data-kind=error]", timeout=60_000)
    assert len(call_page.websockets) > attempts_before, "it dialled LiveKit again with the new token"
    page.click("#end")
    page.wait_for_selector("#notice:has-text('Call ended.')")


@pytest.mark.browser
def test_a_livekit_server_that_is_down_is_reported_when_starting(call_page: PageRun, fake_livekit: FakeLiveKit) -> None:
    page = call_page.page
    fake_livekit.answer_api = False
    try:
        page.select_option("#agent", "sales")
        with page.expect_response(lambda r: urlsplit(r.url).path == "/api/v1/browser/sessions") as created:
            page.click("#start")
        assert created.value.status == 502 and created.value.json()["code"] == "dispatch_failed"
        page.wait_for_selector("#notice[data-kind=error]")
    finally:
        fake_livekit.answer_api = True
    assert page.inner_text("#notice").startswith("Could not start the call:")
    assert page.inner_text("#conn") == "Not connected"
    assert page.is_enabled("#start"), "the caller can try again"


@pytest.mark.browser
def test_local_mode_page_says_a_livekit_server_is_needed(local_call_page: PageRun) -> None:
    page = local_call_page.page
    page.wait_for_load_state("networkidle")

    notice = page.locator("[data-testid=local-mode]")
    assert "A LiveKit server is needed for browser calls" in notice.inner_text()
    assert notice.locator("a[href='/dashboard/']").count() == 1
    assert page.locator("#start").count() == 0
    assert local_call_page.errors == []


# --------------------------------------------------------------------------------------
# After the media connection: livekit-client's network layer replaced in the page
# --------------------------------------------------------------------------------------
# No LiveKit server runs here, so these tests replace only the SDK's network-facing
# methods (Room.connect/disconnect through a subclass, the microphone publish, performRpc, the text-stream
# registration) in the page and drive the real SDK Room's events with the real enums.
# The page's script, the platform's API and the database are all real.

SDK_SEAM = """
() => {
  const LK = window.LivekitClient;
  const seam = (window.__seam = { joins: [], rpc: [], connectPlan: [], rpcMode: "fail", room: null });
  // connect/disconnect are per-instance fields in livekit-client, hence the subclass.
  const RealRoom = LK.Room;
  LK.Room = class SeamRoom extends RealRoom {
    constructor(options) {
      super(options);
      this.connect = async (url, token) => {
        seam.joins.push({ url, token });
        if (seam.connectPlan.shift() === "token-expired") throw LK.ConnectionError.notAllowed("token is expired", 401);
        this.state = LK.ConnectionState.Connected;
        this.localParticipant.identity = "caller-test";
        seam.room = this;
      };
      this.disconnect = async () => {
        if (this.state === LK.ConnectionState.Disconnected) return;
        seam.disconnects = (seam.disconnects || 0) + 1;
        this.state = LK.ConnectionState.Disconnected;
        this.emit(LK.RoomEvent.Disconnected, LK.DisconnectReason.CLIENT_INITIATED);
      };
    }
  };
  LK.Room.prototype.registerTextStreamHandler = function (topic, callback) {
    this.__textHandlers = { ...(this.__textHandlers || {}), [topic]: callback };
  };
  LK.LocalParticipant.prototype.setMicrophoneEnabled = async function (on) {
    if (seam.micError) throw Object.assign(new Error("microphone refused"), { name: seam.micError });
    seam.mic = on;
  };
  LK.LocalParticipant.prototype.performRpc = function (params) {
    seam.rpc.push(params);
    if (seam.rpcMode === "ok") return Promise.resolve('{"ok": true}');
    if (seam.rpcMode === "hang") return new Promise(() => {});
    return Promise.reject(new LK.RpcError(1503, "Recipient disconnected"));
  };
  seam.agent = { identity: "agent-AJ_test", isAgent: true, kind: LK.ParticipantKind.AGENT,
                 attributes: { "lk.agent.state": "listening" } };
  seam.agentJoins = () => seam.room.emit(LK.RoomEvent.ParticipantConnected, seam.agent);
  seam.agentState = (state) => {
    seam.agent.attributes["lk.agent.state"] = state;
    seam.room.emit(LK.RoomEvent.ParticipantAttributesChanged, { "lk.agent.state": state }, seam.agent);
  };
  seam.caption = (identity, segment, chunks, final) => seam.room.__textHandlers["lk.transcription"](
    { info: { id: "TS_" + segment + chunks.length,
              attributes: { "lk.segment_id": segment, "lk.transcription_final": String(final) } },
      async *[Symbol.asyncIterator]() { for (const chunk of chunks) yield chunk; } },
    { identity });
  seam.userSpeaks = () => seam.room.emit(LK.RoomEvent.ActiveSpeakersChanged, [seam.room.localParticipant]);
  seam.emit = (name, ...args) => seam.room.emit(LK.RoomEvent[name], ...args);
  seam.drop = () => {
    const room = seam.room;
    room.state = LK.ConnectionState.Disconnected;
    room.emit(LK.RoomEvent.Disconnected, LK.DisconnectReason.SIGNAL_CLOSE);
  };
}
"""


@pytest.fixture
def seamed_call(call_page: PageRun) -> PageRun:
    call_page.page.evaluate(SDK_SEAM)
    return call_page


def _posts(run: PageRun, suffix: str) -> int:
    return len(run.api_calls(suffix))


@pytest.mark.browser
def test_it_shows_the_agent_state_and_live_captions(seamed_call: PageRun) -> None:
    page = seamed_call.page
    grant = _start_call(seamed_call)
    page.wait_for_function("document.querySelector('#conn').textContent === 'Connected'")
    assert page.evaluate("window.__seam.joins") == [{"url": grant["url"], "token": grant["token"]}]
    assert page.evaluate("window.__seam.mic") is True, "the microphone is published"

    page.evaluate("window.__seam.agentJoins()")
    page.wait_for_selector("#agent-state[data-state=listening]")
    page.evaluate("window.__seam.agentState('thinking')")
    page.wait_for_selector("#agent-state[data-state=thinking]")
    assert page.inner_text("#agent-state-label") == "Agent: thinking"

    page.evaluate("window.__seam.caption('caller-test', 'SG_user1', ['I want to', ' order'], false)")
    page.evaluate("window.__seam.caption('caller-test', 'SG_user1', ['I want to order a pizza'], true)")
    page.evaluate("window.__seam.agentState('speaking')")
    page.evaluate("window.__seam.caption('agent-AJ_test', 'SG_agent1', ['Sure, ', 'which ', 'size?'], false)")
    page.wait_for_selector("[data-segment=SG_agent1]:not(.interim)")

    lines = page.eval_on_selector_all(
        "#captions .caption", "els => els.map(e => [e.dataset.who, e.querySelector('.text').textContent])"
    )
    assert lines == [["you", "I want to order a pizza"], ["agent", "Sure, which size?"]]
    assert page.inner_text("#agent-state-label") == "Agent: speaking"
    assert seamed_call.errors == []
    save_screenshot(page, "call-page-in-call")
    page.emulate_media(color_scheme="dark")
    save_screenshot(page, "call-page-in-call-dark")
    page.click("#end")
    page.wait_for_selector("#notice:has-text('Call ended.')")


@pytest.mark.browser
def test_interrupt_uses_the_agents_rpc_and_falls_back_to_the_api_when_it_fails(seamed_call: PageRun) -> None:
    page = seamed_call.page
    grant = _start_call(seamed_call)
    page.wait_for_function("document.querySelector('#conn').textContent === 'Connected'")
    page.evaluate("window.__seam.agentJoins()")
    page.wait_for_selector("#agent-state[data-state=listening]")

    page.evaluate("window.__seam.rpcMode = 'ok'")
    page.click("#interrupt")
    page.wait_for_selector("#notice:has-text('Interrupted the agent.')")
    rpc = page.evaluate("window.__seam.rpc")
    assert [(c["destinationIdentity"], c["method"]) for c in rpc] == [("agent-AJ_test", "interrupt")]
    assert _posts(seamed_call, "/interrupt") == 0, "a working RPC needs no API call"

    page.evaluate("window.__seam.rpcMode = 'fail'")
    page.wait_for_timeout(1100)  # the page sends at most one interrupt a second
    with page.expect_response(f"**/api/v1/browser/sessions/{grant['session_id']}/interrupt") as fallback:
        page.click("#interrupt")
    assert fallback.value.status == 202
    page.wait_for_selector("#notice:has-text('Interrupt sent through the platform')")

    page.evaluate("window.__seam.rpcMode = 'hang'")  # an agent that never answers
    page.wait_for_timeout(1100)
    with page.expect_response(f"**/api/v1/browser/sessions/{grant['session_id']}/interrupt", timeout=15_000):
        page.click("#interrupt")
    assert len(page.evaluate("window.__seam.rpc")) == 3


@pytest.mark.browser
def test_it_interrupts_when_the_caller_starts_talking_over_the_agent(seamed_call: PageRun) -> None:
    page = seamed_call.page
    _start_call(seamed_call)
    page.wait_for_function("document.querySelector('#conn').textContent === 'Connected'")
    page.evaluate("window.__seam.agentJoins(); window.__seam.rpcMode = 'ok'")

    page.evaluate("window.__seam.userSpeaks()")  # the agent is listening: nothing to interrupt
    assert page.evaluate("window.__seam.rpc.length") == 0

    page.evaluate("window.__seam.agentState('speaking')")
    page.evaluate("window.__seam.userSpeaks()")
    page.wait_for_function("window.__seam.rpc.length === 1")
    assert page.evaluate("JSON.parse(window.__seam.rpc[0].payload)") == {"source": "speech"}

    page.uncheck("#auto-interrupt")
    page.wait_for_timeout(1100)
    page.evaluate("window.__seam.userSpeaks()")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__seam.rpc.length") == 1, "the caller switched auto-interrupt off"


@pytest.mark.browser
def test_a_lost_room_rejoins_with_a_fresh_token_and_says_so(seamed_call: PageRun) -> None:
    page = seamed_call.page
    grant = _start_call(seamed_call)
    page.wait_for_function("document.querySelector('#conn').textContent === 'Connected'")

    page.evaluate("window.__seam.emit('Reconnecting')")  # the SDK's own reconnection first
    page.wait_for_function("document.querySelector('#conn').textContent === 'Reconnecting…'")
    page.evaluate("window.__seam.emit('Reconnected')")
    page.wait_for_selector("#notice:has-text('Reconnected.')")
    assert _posts(seamed_call, "/reconnect") == 0

    with page.expect_response(f"**/api/v1/browser/sessions/{grant['session_id']}/reconnect") as rejoined:
        page.evaluate("window.__seam.drop()")  # the room is lost for good
    assert rejoined.value.status == 200
    page.wait_for_selector("#notice:has-text('Reconnected: you are back in the call.')")
    joins = page.evaluate("window.__seam.joins")
    assert len(joins) == 2 and joins[1]["token"] == rejoined.value.json()["token"]
    assert page.inner_text("#conn") == "Connected"


@pytest.mark.browser
def test_it_says_when_the_agent_does_not_join(seamed_call: PageRun) -> None:
    page = seamed_call.page
    _start_call(seamed_call)
    page.wait_for_selector("#agent-state[data-state=initializing]")

    page.wait_for_selector("#agent-state[data-state=missing]", timeout=20_000)  # CALL_AGENT_JOIN_TIMEOUT_SECONDS=2
    assert "The agent has not joined after 2 s" in page.inner_text("#notice")
    assert page.is_enabled("#end"), "the caller can still hang up"

    page.evaluate("window.__seam.agentJoins()")
    page.wait_for_selector("#notice:has-text('The agent joined.')")


@pytest.mark.browser
def test_it_says_when_the_platform_gives_up_on_the_agent(seamed_call: PageRun) -> None:
    page = seamed_call.page
    created = _start_call(seamed_call)
    page.wait_for_selector("#agent-state[data-state=missing]", timeout=20_000)
    # What sessions_app.lifecycle does after the last dispatch no agent answered.
    seamed_call.site.orm(
        "from sessions_app.services import session_transition\n"
        f"session_transition(session_id={created['session_id']!r}, to_state='failed', reason='agent_unavailable')"
    )

    page.wait_for_selector("#notice:has-text('No agent could take the call')", timeout=15_000)
    assert page.is_enabled("#start"), "the call is over: the caller can start another"


@pytest.mark.browser
def test_an_expired_token_is_reported_and_rejoin_gets_a_fresh_one(seamed_call: PageRun) -> None:
    page = seamed_call.page
    page.evaluate("window.__seam.connectPlan.push('token-expired')")
    _start_call(seamed_call)

    message = _wait_for_connect_failure(seamed_call)
    assert "refused the call token (HTTP 401). It may have expired" in message

    page.click("#rejoin")
    page.wait_for_selector("#notice:has-text('Reconnected: you are back in the call.')")
    assert _posts(seamed_call, "/reconnect") == 1


@pytest.mark.browser
def test_a_refused_microphone_is_explained_and_rejoin_recovers(seamed_call: PageRun) -> None:
    page = seamed_call.page
    page.evaluate("window.__seam.micError = 'NotAllowedError'")
    _start_call(seamed_call)

    page.wait_for_selector("#notice[data-kind=error]")
    assert "Your microphone could not be used (permission was denied)" in page.inner_text("#notice")
    assert page.is_visible("#rejoin") and page.is_enabled("#end")

    page.evaluate("window.__seam.micError = null")
    page.click("#rejoin")
    page.wait_for_selector("#notice:has-text('Reconnected: you are back in the call.')")
    assert page.evaluate("window.__seam.mic") is True
    assert page.evaluate("window.__seam.joins.length") == 2
    assert page.evaluate("window.__seam.disconnects") == 1, "the first room was left before joining again"
