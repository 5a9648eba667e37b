"""Scenario files: every shipped one loads, and broken ones fail with a pointed message."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents_app.runtime.simulator import scenarios
from agents_app.runtime.simulator.scenarios import ScenarioError, load, parse

REQUIRED = {"basic", "barge-in", "client-interrupt", "reconnect", "agent-restart", "tool"}


def test_the_issue_scenarios_ship_and_validate() -> None:
    assert REQUIRED <= set(scenarios.available())
    for name in scenarios.available():
        scenario = load(name)
        assert scenario.name == name
        assert scenario.steps[-1].kind == "end", f"{name} should end its session"


def test_scenarios_ask_for_what_they_demonstrate() -> None:
    assert load("basic").expect["min_turns"] >= 4  # greeting + 3 caller turns
    assert load("barge-in").expect["interrupt_source"] == "vad"
    assert load("client-interrupt").expect["interrupt_source"] == "client"
    assert [s.kind for s in load("reconnect").steps].count("reconnect") == 1
    assert "agent_restart" in [s.kind for s in load("agent-restart").steps]
    tool = load("tool")
    assert "retry_tool" in [s.kind for s in tool.steps] and tool.expect["one_side_effect"] is True


def test_it_names_an_unknown_step_and_lists_the_valid_ones() -> None:
    with pytest.raises(ScenarioError) as error:
        parse({"name": "x", "steps": [{"say": "hi"}, {"shout": "HI"}]}, source="x.yaml")
    message = str(error.value)
    assert "x.yaml" in message and "steps[1]" in message and "shout" in message and "wait_for_agent" in message


def test_it_rejects_a_step_with_two_names() -> None:
    with pytest.raises(ScenarioError, match="exactly one step name"):
        parse({"name": "x", "steps": [{"say": "hi", "end": {}}]})


def test_it_rejects_bad_step_arguments() -> None:
    with pytest.raises(ScenarioError, match=r"steps\[0\]\.barge_in"):
        parse({"name": "x", "steps": [{"barge_in": {"after": 1}}]})  # no `say`


def test_it_rejects_a_reconnect_without_a_drop_before_it() -> None:
    with pytest.raises(ScenarioError, match="needs a `drop` step"):
        parse({"name": "x", "steps": [{"reconnect": {}}, {"drop": {}}]})


def test_it_rejects_unknown_top_level_keys_and_expectations() -> None:
    with pytest.raises(ScenarioError) as error:
        parse({"name": "x", "steps": [{"end": {}}], "expect": {"min_turnz": 1}, "agnet": "demo"})
    assert "min_turnz" in str(error.value) and "agnet" in str(error.value)


def test_a_missing_scenario_lists_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match="barge-in"):
        load("no-such-scenario")


def test_it_loads_a_scenario_from_a_path_and_reports_bad_yaml(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nagent: support\nsteps:\n  - say: Hello\n  - end: {}\n")
    scenario = load(str(good))
    assert scenario.agent == "support" and [s.kind for s in scenario.steps] == ["say", "end"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(str(bad))
