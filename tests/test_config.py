"""Settings: defaults, environment over TOML file, every problem at once, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.bus.subjects import Subjects
from worker.cli import main
from worker.config import (
    VARIABLES,
    ConfigError,
    Settings,
    load_settings,
    mask_url,
    masked,
)


def _problems(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return {p.setting: p.message for p in info.value.problems}


def test_defaults_embed_both_servers_on_fixed_ports() -> None:
    s = load_settings({})
    assert s == Settings()
    assert s.nats.url is None and s.database.url is None
    assert (s.nats.embedded_port, s.database.embedded_port) == (14222, 15432)
    assert (s.http.host, s.http.port) == ("127.0.0.1", 9464)
    assert s.bus.prefix == "roomserver" and s.bus.shards == 4
    names = Subjects(s.bus.prefix)
    assert (names.input_stream, names.output_stream, names.deadletter_stream) == (
        "ROOMSERVER_INPUT",
        "ROOMSERVER_OUTPUT",
        "ROOMSERVER_DEADLETTER",
    )
    assert s.bus.federation_prefix == "federation.request"
    assert s.data_dir == "./var" and s.log_level == "info"


def test_environment_is_parsed_into_the_tree() -> None:
    s = load_settings(
        {
            "NATS_URL": "nats://a:4222,nats://b:4222",
            "DATABASE_URL": "postgresql://rs@db/roomserver",
            "ROOMSERVER_PREFIX": "rs_test",
            "METRICS_ADDR": "0.0.0.0:9100",
            "SHARDS": "16",
            "LOG_LEVEL": "DEBUG",
            "RETRY_BACKOFF": "0.5",
            "DRAIN_GRACE_SECONDS": "5",
            "FEDERATION_PREFIX": "fed.req",
            "EVENT_LOOP": "AsyncIO",
            "UNRELATED": "ignored",
        }
    )
    assert s.event_loop == "asyncio"
    assert s.nats.url == "nats://a:4222,nats://b:4222"
    assert s.database.url == "postgresql://rs@db/roomserver"
    assert Subjects(s.bus.prefix).input_stream == "RS_TEST_INPUT"
    assert (s.http.host, s.http.port) == ("0.0.0.0", 9100)
    assert (s.bus.shards, s.log_level, s.bus.retry_backoff) == (16, "debug", 0.5)
    assert s.drain_grace_seconds == 5.0
    assert s.bus.federation_prefix == "fed.req"


def test_toml_file_is_read_and_environment_overrides_it(tmp_path: Path) -> None:
    path = tmp_path / "roomserver.toml"
    path.write_text('shards = 8\nlog_level = "warning"\nMETRICS_ADDR = "127.0.0.1:9999"\n')
    s = load_settings({"CONFIG_FILE": str(path), "LOG_LEVEL": "error"})
    assert (s.bus.shards, s.log_level, s.http.port) == (8, "error", 9999)
    assert s.config_file == str(path)


def test_toml_file_problems_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('shards = "x"\nnot_a_setting = 1\nnats_url = ["a"]\n')
    assert _problems({"CONFIG_FILE": str(path)}) == {
        "SHARDS": "must be an integer, got 'x'",
        "not_a_setting": f"unknown setting in {path}",
        "NATS_URL": f"must be a string or a number in {path}",
    }
    assert "cannot read" in _problems({"CONFIG_FILE": str(tmp_path / "missing.toml")})[
        "CONFIG_FILE"
    ]
    path.write_text("shards = \n")
    assert "is not valid TOML" in _problems({"CONFIG_FILE": str(path)})["CONFIG_FILE"]


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        {
            "SHARDS": "0",
            "NATS_URL": "http://nats:4222",
            "DATABASE_URL": "mysql://db",
            "LOG_LEVEL": "loud",
            "METRICS_ADDR": "9090",
            "ROOMSERVER_PREFIX": "room.server",
            "FEDERATION_PREFIX": "fed.>",
            "RETRY_BACKOFF": "-1",
            "DRAIN_GRACE_SECONDS": "soon",
            "NATS_USER": "alice",
            "NATS_TLS_CA": "/nonexistent/ca.pem",
        }
    )
    assert problems == {
        "SHARDS": "must be between 1 and 1024, got 0",
        "NATS_URL": "must start with nats:// or tls:// or ws:// or wss://, "
        "got 'http://nats:4222'",
        "DATABASE_URL": "must start with postgres:// or postgresql://, got 'mysql://db'",
        "LOG_LEVEL": "must be one of debug, info, warning, error, critical, got 'loud'",
        "METRICS_ADDR": "must be HOST:PORT, got '9090'",
        "ROOMSERVER_PREFIX": "must be 1-64 letters, digits, '_' or '-', got 'room.server'",
        "FEDERATION_PREFIX": "must be dot-separated subject tokens without wildcards, "
        "got 'fed.>'",
        "RETRY_BACKOFF": "must be between 0 and 3600, got -1",
        "DRAIN_GRACE_SECONDS": "must be a number, got 'soon'",
        "NATS_PASSWORD": "NATS_USER and NATS_PASSWORD must be set together",
        "NATS_TLS_CA": "file not found: /nonexistent/ca.pem",
    }


def test_cross_field_rules(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("not checked here")
    assert _problems(
        {"NATS_URL": "nats://n", "NATS_TOKEN": "t", "NATS_CREDS_FILE": str(creds)}
    ) == {
        "NATS_CREDS_FILE": "choose one NATS authentication method, got NATS_TOKEN, "
        "NATS_CREDS_FILE"
    }
    assert "NATS_URL" in _problems({"NATS_TOKEN": "t"})
    assert _problems({"NATS_URL": "nats://n", "NATS_TLS_CERT": str(creds)}) == {
        "NATS_TLS_KEY": "NATS_TLS_CERT and NATS_TLS_KEY must be set together"
    }
    assert _problems({"EMBEDDED_PG_PORT": "14222"}) == {
        "EMBEDDED_PG_PORT": "port 14222 is already used by EMBEDDED_NATS_PORT"
    }
    # An external NATS frees its embedded port for other uses.
    load_settings({"NATS_URL": "nats://n", "EMBEDDED_PG_PORT": "14222"})
    assert _problems({"DATABASE_POOL_MIN": "20"}) == {
        "DATABASE_POOL_MIN": "must not exceed DATABASE_POOL_MAX (10), got 20"
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@n:4222", "nats://alice:***@n:4222"),
        ("nats://tok3n@n:4222", "nats://***@n:4222"),
        ("nats://a:x@n1,nats://b:y@n2", "nats://a:***@n1,nats://b:***@n2"),
        ("postgresql://rs:pw@db:5432/rs", "postgresql://rs:***@db:5432/rs"),
        ("postgresql://rs@db/rs", "postgresql://rs@db/rs"),
        ("postgres://db/rs?user=rs&password=pw&sslmode=require",
         "postgres://db/rs?user=rs&password=***&sslmode=require"),
        ("nats://n:4222", "nats://n:4222"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_masked_hides_every_secret() -> None:
    s = load_settings(
        {
            "NATS_URL": "nats://u:urlpw@n",
            "NATS_USER": "u",
            "NATS_PASSWORD": "envpw",
            "DATABASE_URL": "postgresql://rs:dbpw@db/rs",
        }
    )
    text = json.dumps(masked(s))
    for secret in ("urlpw", "envpw", "dbpw"):
        assert secret not in text
    assert masked(s)["nats"]["password"] == "***"
    assert masked(s)["nats"]["user"] == "u"
    secrets = {v.name for v in VARIABLES if v.secret}
    assert secrets == {"NATS_PASSWORD", "NATS_TOKEN"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    return monkeypatch


def test_config_command_prints_masked_json(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("NATS_URL", "nats://n")
    clean_env.setenv("NATS_TOKEN", "hunter2")
    clean_env.setenv("DATABASE_URL", "postgresql://rs:dbpw@db/rs")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["nats"]["token"] == "***"
    assert data["database"]["url"] == "postgresql://rs:***@db/rs"
    assert data["bus"]["shards"] == 4
    assert "hunter2" not in out and "dbpw" not in out


def test_config_command_exits_2_listing_all_problems(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("SHARDS", "-3")
    clean_env.setenv("LOG_LEVEL", "chatty")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "SHARDS: must be between 1 and 1024, got -3" in err
    assert "LOG_LEVEL: must be one of" in err


def test_variables_listing_names_every_setting(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--variables"]) == 0
    out = capsys.readouterr().out
    for var in VARIABLES:
        assert var.name in out


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default else "—"
        assert f"| `{var.name}` | {default} | {var.help} |" in readme, var.name


def test_readme_lists_every_command() -> None:
    from worker.cli import COMMANDS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in COMMANDS:
        assert f"| `{name}` |" in readme, name


def test_stream_replicas() -> None:
    assert load_settings({}).bus.stream_replicas == 0  # keep what the streams have
    assert load_settings({"STREAM_REPLICAS": "3"}).bus.stream_replicas == 3
    with pytest.raises(ConfigError) as err:
        load_settings({"STREAM_REPLICAS": "7"})
    assert "STREAM_REPLICAS" in str(err.value)
