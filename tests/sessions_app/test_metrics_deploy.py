"""The shipped Prometheus scrape config and alert rules match the metrics we export."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import sessions_app.metrics  # noqa: F401  (registers the voice metrics)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES)
    return names


def _rules() -> list[dict]:
    config = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_the_scrape_config_loads_the_rules_and_scrapes_web_and_agents():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (DEPLOY / rule_file).exists()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"voice-web", "voice-agent"}
    assert jobs["voice-agent"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]  # AGENT_METRICS_PORT default


def test_every_alert_uses_only_metrics_the_platform_exports():
    exported = _exported_names()
    for rule in _rules():
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), rule["alert"]
        for name in re.findall(r"\bvoice_[a-z_]+\b", expr):
            assert name in exported, f"{rule['alert']} uses {name}, which nothing exports"
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}


def test_the_four_user_experience_metrics_have_alerts():
    exprs = " ".join(rule["expr"] for rule in _rules())
    assert 'stage="e2e"' in exprs
    assert 'stage="ttfa"' in exprs
    assert "voice_interrupts_total" in exprs and "voice_sessions_served_total" in exprs
    assert "voice_reconnects_total" in exprs
    assert "voice_budget_breaches_total" in exprs
