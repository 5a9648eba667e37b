"""Phone lines (issue 29): validation, the admin form, and the sync to LiveKit's SIP service.

The server side is livekit-api's SIP client; here the calls to it are replaced by a fake
that records what the platform asked for (the livekit tier's tests/livekit/test_phone_calls.py
runs the real SIP service).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client, override_settings

from agents_app.forms import PhoneLineAdminForm
from agents_app.models import PhoneLine
from agents_app.services import phone_line_delete, phone_line_sync, phone_lines_sync_all
from agents_app.signals import PROMPT_EDITORS, SUPPORT_STAFF, groups_ensure
from sessions_app import livekit_server

pytestmark = pytest.mark.django_db
LIVEKIT = {"LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_LOCAL_MODE": False}


def _line(agent: Any, **fields: Any) -> PhoneLine:
    values = {"agent": agent, "number": "+15550100", "allowed_addresses": ["203.0.113.10"], **fields}
    return PhoneLine.objects.create(**values)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["5550100", "+0123456789", "+1 555 0100", "+1555", "+1234567890123456"])
def test_a_number_not_in_e164_form_is_refused(agent, number):
    with pytest.raises(ValidationError) as error:
        PhoneLine(agent=agent, number=number, allowed_addresses=["203.0.113.10"]).full_clean()
    assert "number" in error.value.message_dict


@pytest.mark.parametrize("address", ["0.0.0.0/0", "10.0.0.0/8", "::/0", "2001:db8::/16"])
def test_a_line_open_to_the_world_is_refused(agent, address):
    with pytest.raises(ValidationError) as error:
        PhoneLine(agent=agent, number="+15550100", allowed_addresses=[address]).full_clean()
    assert "never open to the world" in str(error.value.message_dict["allowed_addresses"])


def test_a_line_needs_addresses_or_credentials(agent):
    with pytest.raises(ValidationError) as error:
        PhoneLine(agent=agent, number="+15550100").full_clean()
    assert "allowed_addresses" in error.value.message_dict
    PhoneLine(agent=agent, number="+15550100", auth_username="pbx", auth_password="a-long-secret-1").full_clean()
    PhoneLine(agent=agent, number="+15550101", allowed_addresses=["198.51.100.0/24", "2001:db8::1"]).full_clean()


def test_digest_credentials_come_in_pairs_and_the_password_is_long(agent):
    for username, password in (("pbx", ""), ("", "a-long-secret-1"), ("pbx", "short")):
        with pytest.raises(ValidationError) as error:
            PhoneLine(
                agent=agent, number="+15550100", allowed_addresses=["203.0.113.10"],
                auth_username=username, auth_password=password,
            ).full_clean()  # fmt: skip
        assert "auth_password" in error.value.message_dict


def test_a_garbled_address_is_named(agent):
    with pytest.raises(ValidationError) as error:
        PhoneLine(agent=agent, number="+15550100", allowed_addresses=["203.0.113.300"]).full_clean()
    assert "'203.0.113.300' is not an IP address" in str(error.value)


# --- the admin form ---------------------------------------------------------------------------


def _form(agent: Any, instance: PhoneLine | None = None, **data: Any) -> PhoneLineAdminForm:
    base = {"number": "+15550100", "agent": agent.pk, "active": "on", "allowed_addresses": "", "auth_username": ""}
    return PhoneLineAdminForm(data={**base, **data}, instance=instance)


def test_the_form_takes_one_address_per_line(agent):
    form = _form(agent, allowed_addresses="203.0.113.10\r\n\r\n 198.51.100.0/24 \n")
    assert form.is_valid(), form.errors
    assert form.save().allowed_addresses == ["203.0.113.10", "198.51.100.0/24"]


def test_the_form_puts_the_models_errors_on_its_fields(agent):
    form = _form(agent, allowed_addresses="0.0.0.0/0")
    assert not form.is_valid()
    assert "never open to the world" in form.errors["allowed_addresses"][0]
    form = _form(agent, auth_username="pbx", auth_password="short", allowed_addresses="203.0.113.10")
    assert not form.is_valid() and "12 characters" in form.errors["auth_password"][0]


def test_the_password_is_never_shown_and_an_empty_field_keeps_it(agent):
    line = _line(agent, auth_username="pbx", auth_password="the-old-secret-1")
    form = PhoneLineAdminForm(instance=line)
    assert "the-old-secret-1" not in str(form)
    kept = _form(agent, line, allowed_addresses="203.0.113.10", auth_username="pbx", auth_password="")
    assert kept.is_valid(), kept.errors
    assert kept.save().auth_password == "the-old-secret-1"
    changed = _form(agent, line, allowed_addresses="203.0.113.10", auth_username="pbx", auth_password="a-new-secret-22")
    assert changed.is_valid(), changed.errors
    assert changed.save().auth_password == "a-new-secret-22"
    cleared = _form(agent, line, allowed_addresses="203.0.113.10", auth_username="pbx", clear_auth="on")
    assert cleared.is_valid(), cleared.errors
    saved = cleared.save()
    assert (saved.auth_username, saved.auth_password) == ("", "")


# --- the sync to the SIP service ------------------------------------------------------------


def test_without_a_livekit_server_the_line_is_saved_and_says_why_it_is_not_live(agent, sip):
    line = _line(agent)
    error = phone_line_sync(line=line)
    assert "LIVEKIT_URL is unset" in error
    line.refresh_from_db()
    assert line.sync_error == error and not line.livekit_trunk_id and sip.applied == []


@override_settings(**LIVEKIT)
def test_a_line_becomes_a_trunk_and_a_rule_that_dispatch_the_agent(agent, sip):
    line = _line(agent, auth_username="pbx", auth_password="a-long-secret-1")
    assert phone_line_sync(line=line) == ""
    line.refresh_from_db()
    assert (line.livekit_trunk_id, line.livekit_rule_id, line.sync_error) == ("ST_1", "SDR_1", "")
    assert line.synced_at is not None
    spec = sip.applied[0]
    trunk, rule = spec.trunk(), spec.rule("ST_1")
    assert list(trunk.numbers) == ["+15550100"] and list(trunk.allowed_addresses) == ["203.0.113.10"]
    assert (trunk.auth_username, trunk.auth_password) == ("pbx", "a-long-secret-1")
    assert list(rule.trunk_ids) == ["ST_1"]
    assert rule.rule.dispatch_rule_individual.room_prefix == f"phone-{line.pk}-"
    (dispatch,) = rule.room_config.agents
    assert dispatch.agent_name == settings.LIVEKIT_AGENT_NAME
    assert livekit_server.marked_line_id(rule.metadata) == line.pk
    assert f'"{livekit_server.PHONE_LINE_METADATA_KEY}": {line.pk}' in dispatch.metadata
    # A second save replaces the same trunk and rule in place.
    line.allowed_addresses = ["198.51.100.7"]
    line.save()
    assert phone_line_sync(line=line) == ""
    assert (sip.applied[1].trunk_id, sip.applied[1].rule_id) == ("ST_1", "SDR_1")


@override_settings(**LIVEKIT)
def test_a_refusal_is_kept_on_the_line_and_an_inactive_line_is_removed(agent, sip):
    line = _line(agent)
    phone_line_sync(line=line)
    sip.fail = "the SIP service refused the phone line +15550100: invalid_argument (HTTP 400): conflicting number"
    assert "conflicting number" in phone_line_sync(line=line)
    line.refresh_from_db()
    assert "conflicting number" in line.sync_error and line.livekit_trunk_id == "ST_1"
    sip.fail = ""
    line.active = False
    line.save()
    assert phone_line_sync(line=line) == ""
    line.refresh_from_db()
    assert sip.removed == [("ST_1", "SDR_1")] and (line.livekit_trunk_id, line.livekit_rule_id) == ("", "")


@override_settings(**LIVEKIT)
def test_deleting_a_line_deletes_it_on_the_server_first(agent, sip):
    line = _line(agent)
    phone_line_sync(line=line)
    sip.fail = "server down"
    assert phone_line_delete(line=line) == "server down"
    assert PhoneLine.objects.filter(pk=line.pk).exists()  # nothing is left dangling on the server
    sip.fail = ""
    assert phone_line_delete(line=line) == ""
    assert not PhoneLine.objects.exists() and sip.removed == [("ST_1", "SDR_1")]


@override_settings(**LIVEKIT)
def test_the_reconciliation_removes_only_the_platforms_orphans(agent, sip):
    from livekit import api

    line = _line(agent)
    mark = lambda i: f'{{"{livekit_server.PHONE_LINE_MARK}": {i}}}'  # noqa: E731
    sip.listed = (
        [
            api.SIPInboundTrunkInfo(sip_trunk_id="ST_1", metadata=mark(line.pk)),
            api.SIPInboundTrunkInfo(sip_trunk_id="ST_old", metadata=mark(999)),
            api.SIPInboundTrunkInfo(sip_trunk_id="ST_operator", metadata=""),
        ],
        [api.SIPDispatchRuleInfo(sip_dispatch_rule_id="SDR_old", metadata=mark(999))],
    )
    report = phone_lines_sync_all()
    assert report == {"synced": ["+15550100"], "failed": [], "removed": ["SDR_old", "ST_old"]}
    assert ("", "SDR_old") in sip.removed and ("ST_old", "") in sip.removed
    assert all("ST_operator" not in pair for pair in sip.removed)


@pytest.mark.django_db(transaction=True)  # the admin applies the line when its save commits
@override_settings(**LIVEKIT)
def test_the_admin_applies_the_line_and_shows_the_servers_refusal(agent, sip, admin_client: Client):
    response = admin_client.post(
        "/admin/agents_app/phoneline/add/",
        {"number": "+15550100", "agent": agent.pk, "active": "on", "allowed_addresses": "203.0.113.10",
         "auth_username": "", "auth_password": ""},
        follow=True,
    )  # fmt: skip
    assert response.status_code == 200
    assert "is live on the SIP service" in response.content.decode()
    line = PhoneLine.objects.get()
    assert line.livekit_trunk_id == "ST_1"
    sip.fail = "the SIP service refused the phone line +15550100: unavailable (HTTP 503): sip not connected"
    response = admin_client.post(
        f"/admin/agents_app/phoneline/{line.pk}/change/",
        {"number": "+15550100", "agent": agent.pk, "active": "on", "allowed_addresses": "203.0.113.11",
         "auth_username": "", "auth_password": ""},
        follow=True,
    )  # fmt: skip
    page = response.content.decode()
    assert "did not take phone line +15550100" in page and "sip not connected" in page


def test_editors_manage_lines_and_support_staff_only_read_them(db):
    groups = groups_ensure()
    editor = User.objects.create_user("ed", password="x", is_staff=True)
    editor.groups.add(groups[PROMPT_EDITORS])
    staff = User.objects.create_user("st", password="x", is_staff=True)
    staff.groups.add(groups[SUPPORT_STAFF])
    assert editor.has_perms(["agents_app.add_phoneline", "agents_app.change_phoneline", "agents_app.delete_phoneline"])
    assert staff.has_perm("agents_app.view_phoneline") and not staff.has_perm("agents_app.change_phoneline")


@pytest.mark.django_db(transaction=True)  # the check reads the lines from another thread
def test_the_doctor_compares_the_lines_with_the_server(agent, monkeypatch):
    import asyncio

    from livekit import api

    from voiceplatform.doctor import transport

    line = _line(agent, livekit_trunk_id="ST_1")
    held: list[Any] = []

    async def listing() -> tuple[list[Any], list[Any]]:
        if not held:
            raise livekit_server.LiveKitServerError("the SIP service could not be listed: sip not connected")
        return held, []

    monkeypatch.setattr(livekit_server, "sip_lines_list_async", listing)
    check = asyncio.run(transport._check_phone_lines())
    assert check.status == "warn" and "no phone call can arrive" in check.detail
    held.append(api.SIPInboundTrunkInfo(sip_trunk_id="ST_1", numbers=["+15550199"]))
    check = asyncio.run(transport._check_phone_lines())
    assert check.status == "fail" and "+15550100" in check.detail and "--sync" in check.fix
    held[0] = api.SIPInboundTrunkInfo(sip_trunk_id="ST_1", numbers=[line.number])
    check = asyncio.run(transport._check_phone_lines())
    assert check.status == "ok" and "1 live" in check.detail


async def test_a_known_id_is_replaced_and_one_the_server_lost_is_made_again():
    from livekit import api

    calls: list[str] = []

    async def replace(outcome: Exception | None):
        calls.append("replace")
        if outcome is not None:
            raise outcome
        return "replaced"

    async def create():
        calls.append("create")
        return "created"

    assert await livekit_server._replace_or_create("ST_1", lambda: replace(None), create) == "replaced"
    assert await livekit_server._replace_or_create("", lambda: replace(None), create) == "created"
    lost = api.TwirpError("not_found", "no such trunk", status=404)
    assert await livekit_server._replace_or_create("ST_1", lambda: replace(lost), create) == "created"
    assert calls == ["replace", "create", "replace", "create"]
    refused = api.TwirpError("invalid_argument", "bad number", status=400)
    with pytest.raises(api.TwirpError):
        await livekit_server._replace_or_create("ST_1", lambda: replace(refused), create)
