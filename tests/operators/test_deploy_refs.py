"""deploy/ matches the worker: metrics used by the alerts and the dashboard are on a running
worker's /metrics, files that compose and the manifests reference exist, and the NATS
definitions are what the worker itself configures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from nats.js.api import ConsumerConfig, StreamConfig

from worker.bus.consumer import ConsumerSettings
from worker.bus.subjects import Subjects
from worker.config import VARIABLES, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
_SUFFIXES = {
    "counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"), "info": ("_info",), "untyped": ("",),
}


def _yaml(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def exposed_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition can hold, from its TYPE lines (a metric
    with labels and no observation yet has no samples, only its HELP and TYPE lines)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + s for s in _SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _get(url: str) -> tuple[int, str]:
    def go() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    return await asyncio.to_thread(go)


async def test_every_metric_in_alerts_and_dashboard_is_on_a_running_worker(
    nats_url: str, database_dsn: str, prefix: str
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {v.name for v in VARIABLES}}
    env.update(NATS_URL=nats_url, DATABASE_URL=database_dsn, ROOMSERVER_PREFIX=prefix,
               METRICS_ADDR=f"127.0.0.1:{port}", SHARDS="2", LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "run", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        status = 0
        while status != 200:  # the worker is up once /readyz says so (the test timeout bounds it)
            assert proc.returncode is None, "the worker exited"
            await asyncio.sleep(0.2)
            status, _ = await _get(f"http://127.0.0.1:{port}/readyz")
        status, text = await _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0  # drains and exits 0 on SIGTERM
    exposed = exposed_names(text)
    assert "roomserver_events_processed_total" in exposed
    sources = [*sorted((DEPLOY / "prometheus").glob("*.yml")), DEPLOY / "grafana" / "roomserver.json"]
    assert len(sources) >= 3
    for path in sources:
        used = set(re.findall(r"\broomserver_[a-z_]+", path.read_text()))
        assert used, path
        assert used <= exposed, (path.name, sorted(used - exposed))


def test_files_compose_references_exist() -> None:
    [compose] = _yaml(COMPOSE_DIR / "compose.yaml")
    services = compose["services"]
    assert {"nats-1", "nats-2", "nats-3", "postgres", "prometheus", "grafana"} <= set(services)
    workers = [s for s in services.values() if "build" in s]
    assert len(workers) == 2
    known = {v.name for v in VARIABLES}
    for worker in workers:
        context = (COMPOSE_DIR / worker["build"]["context"]).resolve()
        dockerfile = context / worker["build"]["dockerfile"]
        assert dockerfile.is_file()
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (context / src).exists(), (line, src)
        assert set(worker["environment"]) <= known
        urls = worker["environment"]["NATS_URL"].split(",")
        assert sorted(u.split("//")[1].split(":")[0] for u in urls) == ["nats-1", "nats-2", "nats-3"]
    mounted: dict[str, Path] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            src, dst = volume.split(":")[:2]
            if src.startswith("."):
                path = (COMPOSE_DIR / src).resolve()
                assert path.exists(), (name, volume)
                mounted[dst] = path
    # Every rule file of deploy/prometheus is loaded by the Prometheus of compose.
    [prom] = _yaml(COMPOSE_DIR / "prometheus.yml")
    assert prom["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    rules = {p for d, p in mounted.items() if d.startswith("/etc/prometheus/rules/")}
    assert rules == set((DEPLOY / "prometheus").glob("*.yml"))
    assert mounted["/etc/prometheus/prometheus.yml"] == COMPOSE_DIR / "prometheus.yml"
    assert [j["job_name"] for j in prom["scrape_configs"]] == ["roomserver"]
    # Grafana loads the dashboard from where compose mounts it.
    provider = _yaml(COMPOSE_DIR / "grafana/provisioning/dashboards/roomserver.yaml")[0]
    path = provider["providers"][0]["options"]["path"]
    assert mounted[f"{path}/roomserver.json"] == DEPLOY / "grafana" / "roomserver.json"
    assert mounted["/etc/grafana/provisioning"] == COMPOSE_DIR / "grafana" / "provisioning"
    # The NATS nodes form one cluster that routes to all three.
    conf = (COMPOSE_DIR / "nats-server.conf").read_text()
    assert all(f"nats-route://nats-{n}:6222" in conf for n in (1, 2, 3))


def test_kubernetes_manifests_hold_together() -> None:
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in _yaml(p)]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    [deployment] = by_kind["Deployment"]
    [pdb] = by_kind["PodDisruptionBudget"]
    [config_map] = by_kind["ConfigMap"]
    secrets = {s["metadata"]["name"] for s in by_kind["Secret"]}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for ref in container["envFrom"]:
        if "configMapRef" in ref:
            assert ref["configMapRef"]["name"] == config_map["metadata"]["name"]
        else:
            assert ref["secretRef"]["name"] in secrets
    ports = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {container[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} <= ports
    assert pod["terminationGracePeriodSeconds"] >= float(config_map["data"]["DRAIN_GRACE_SECONDS"])
    assert set(config_map["data"]) <= {v.name for v in VARIABLES}


def test_nats_definitions_are_what_the_worker_configures() -> None:
    settings = load_settings({})
    subjects = Subjects(settings.bus.prefix)
    for path in sorted((DEPLOY / "nats").glob("*.json")):
        config = StreamConfig.from_response(json.loads(path.read_text()))
        assert config.name == path.stem
    consumers = ConsumerSettings.configured(
        shards=settings.bus.shards,
        max_retries=settings.bus.max_retries,
        retry_backoff=settings.bus.retry_backoff,
        drain_grace=settings.drain_grace_seconds,
    )
    files = sorted((DEPLOY / "nats" / "consumers").glob("*.json"))
    assert [p.stem for p in files] == [subjects.input_consumer(n) for n in range(consumers.shards)]
    input_stream = json.loads((DEPLOY / "nats" / f"{subjects.input_stream}.json").read_text())
    assert f"partition({consumers.shards},1)" in input_stream["subject_transform"]["dest"]
    for shard, path in enumerate(files):
        have = ConsumerConfig.from_response(json.loads(path.read_text()))
        # If this fails, regenerate the file from ConsumerSettings.consumer_config().as_dict().
        assert have == consumers.consumer_config(subjects, shard), path.name
