"""deploy/ stays in step with the code: files parse, and every metric they use exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client.metrics import MetricWrapperBase

from worker.config import VARIABLES
from worker.observability import metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}


def _exported_names() -> set[str]:
    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type  # prometheus_client keeps the metric type here
            names.update(value._name + suffix for suffix in _SUFFIXES[kind])
        elif isinstance(value, metrics.StageHistogram):
            names.update(value.name + suffix for suffix in _SUFFIXES["histogram"])
    return names


def test_deploy_files_parse() -> None:
    for path in DEPLOY.rglob("*.y*ml"):
        assert list(yaml.safe_load_all(path.read_text())), path
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text())


def test_alerts_and_dashboard_use_only_defined_metrics() -> None:
    exported = _exported_names()
    assert "roomserver_events_processed_total" in exported
    for path in [DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "grafana" / "roomserver.json"]:
        used = set(re.findall(r"\broomserver_[a-z_]+", path.read_text()))
        assert used, path
        assert used <= exported, (path, sorted(used - exported))


def test_deploy_environment_names_are_settings() -> None:
    known = {v.name for v in VARIABLES}
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    assert set(compose["services"]["roomserver"]["environment"]) <= known
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "roomserver.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert set(config_map["data"]) <= known
