"""Caller tokens: livekit-api's TokenVerifier decodes exactly the grants we intend."""

from __future__ import annotations

import datetime as dt

import jwt
import pytest
from django.test import override_settings
from livekit.api import TokenVerifier

from sessions_app.tokens import MAX_TTL_SECONDS, caller_token_mint, client_url


def _verify(token: str):
    from django.conf import settings

    return TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET).verify(token)


def test_it_grants_exactly_join_microphone_subscribe_and_data_for_one_room():
    minted = caller_token_mint(room="vs-room-1", caller_id="alice")
    claims = _verify(minted.token)
    video = claims.video
    assert claims.identity == "caller-alice"
    assert video.room == "vs-room-1"
    assert video.room_join is True
    assert video.can_publish is True
    assert video.can_publish_sources == ["microphone"]
    assert video.can_subscribe is True
    assert video.can_publish_data is True
    assert video.room_admin is False
    assert video.room_create is False
    assert video.room_list is False
    assert video.room_record is False
    assert video.can_update_own_metadata is False
    assert not video.agent and not video.hidden and not video.recorder and not video.ingress_admin
    assert video.destination_room is None
    assert claims.room_config is None


def test_it_puts_no_grants_besides_video_in_the_jwt():
    minted = caller_token_mint(room="vs-room-2", caller_id="bob")
    raw = jwt.decode(minted.token, options={"verify_signature": False})
    assert set(raw) <= {"sub", "iss", "nbf", "exp", "video", "name", "kind"}
    assert set(raw["video"]) == {
        "roomJoin",
        "room",
        "canPublish",
        "canPublishSources",
        "canSubscribe",
        "canPublishData",
        "canUpdateOwnMetadata",
        "roomAdmin",
        "roomCreate",
        "roomList",
        "roomRecord",
    }


def test_it_expires_after_the_default_ten_minutes():
    minted = caller_token_mint(room="r", caller_id="c")
    raw = jwt.decode(minted.token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 600
    assert abs(minted.expires_at.timestamp() - raw["exp"]) <= 1
    assert minted.expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=600)


@override_settings(LIVEKIT_TOKEN_TTL_SECONDS=120)
def test_it_follows_the_configured_ttl():
    raw = jwt.decode(caller_token_mint(room="r", caller_id="c").token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 120


@override_settings(LIVEKIT_TOKEN_TTL_SECONDS=3600)
def test_it_never_issues_a_token_longer_than_fifteen_minutes():
    raw = jwt.decode(caller_token_mint(room="r", caller_id="c").token, options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == MAX_TTL_SECONDS == 900


def test_it_fails_verification_with_another_secret():
    minted = caller_token_mint(room="r", caller_id="c")
    from django.conf import settings

    with pytest.raises(jwt.InvalidSignatureError):
        TokenVerifier(settings.LIVEKIT_API_KEY, "another-secret-of-enough-length-000000").verify(minted.token)


@override_settings(LIVEKIT_URL="", LOCAL_AGENT_HOST="127.0.0.1", LOCAL_AGENT_PORT=8765)
def test_it_points_callers_at_the_local_agent_host_without_livekit():
    assert client_url() == "local://127.0.0.1:8765"


@override_settings(LIVEKIT_URL="wss://lk.example.com")
def test_it_points_callers_at_livekit_when_configured():
    assert client_url() == "wss://lk.example.com"
