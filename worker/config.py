"""Settings from environment variables and an optional TOML file, checked once at start-up.

One table, `VARIABLES`, names every setting: its environment variable, where it lands in the
`Settings` tree, its default, how it is parsed and whether it is a secret. Loading reads the
TOML file named by `CONFIG_FILE` (keys are the variable names, in either case), then lets the
environment override it, then checks everything and reports **every** problem at once in one
`ConfigError` (like Dendrite's `Verify(configErrs)`), which the commands turn into exit code 2.

`NATS_URL` or `DATABASE_URL` unset means "start the embedded server" (worker.embedded).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from worker.core.ids import is_valid_server_name
from worker.core.versions import ROOM_VERSIONS

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EVENT_LOOPS = ("uvloop", "asyncio")
MASK = "***"
EXIT_CONFIG = 2


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach NATS. `url=None`: run the embedded server on `embedded_port`."""

    url: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    embedded_port: int = 14222


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach PostgreSQL. `url=None`: run the embedded server on `embedded_port`."""

    url: str | None = None
    embedded_port: int = 15432
    pool_min_size: int = 2
    pool_max_size: int = 10


class BusSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Names on the wire and the input consumer's retry policy."""

    prefix: str = "roomserver"
    shards: int = 4
    # Replicas of the streams; 0 keeps what the streams have (1 for new ones).
    stream_replicas: int = 0
    max_retries: int = 5
    retry_backoff: float = 2.0
    federation_prefix: str = "federation.request"


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where `/metrics`, `/healthz` and `/readyz` are served."""

    host: str = "127.0.0.1"
    port: int = 9464


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The whole effective configuration of one worker process."""

    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    log_level: str = "info"
    event_loop: str = "uvloop"
    data_dir: str = "./var"
    drain_grace_seconds: float = 30.0
    # In-process caches (worker.storage.caches): the pipeline's store holds these; the query
    # side (queries and performs share one store) a quarter of each.
    cache_state_entries: int = 2_000_000
    cache_events: int = 20_000
    cache_event_ids: int = 500_000
    # History retention (worker.perform.retention): 0 days keeps all history.
    history_retention_days: int = 0
    retention_events_per_run: int = 10_000
    retention_interval_seconds: float = 3600.0
    config_file: str | None = None
    # The identity of the events this server builds (the Perform API, DESIGN §4).
    server_name: str = "localhost"
    # None: `<data_dir>/signing.key`, generated on first start.
    signing_key_file: str | None = None
    default_room_version: str = "12"


class ConfigProblem(msgspec.Struct, frozen=True):
    """One invalid setting: the variable's name and what is wrong with it."""

    setting: str
    message: str


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every reason. Not retryable: exit 2."""

    code = "invalid_config"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = [f"  {p.setting}: {p.message}" for p in problems]
        super().__init__("invalid configuration:\n" + "\n".join(lines))


class _Invalid(ValueError):
    pass


# --- parsers: text in, value out, `_Invalid` with a human message on bad input -------------


def _text(raw: str) -> str:
    return raw


def _optional(raw: str) -> str | None:
    return raw or None


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Invalid(f"must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid(f"must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise _Invalid(f"must be between {low:g} and {high:g}, got {value:g}")
        return value

    return parse


def _url(schemes: tuple[str, ...]) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        if not raw:
            return None
        # A NATS URL may list several servers separated by commas.
        for one in raw.split(","):
            parts = urlsplit(one.strip())
            if parts.scheme not in schemes:
                raise _Invalid(
                    f"must start with {' or '.join(s + '://' for s in schemes)}, "
                    f"got {mask_url(one.strip())!r}"
                )
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise _Invalid(f"has an invalid port: {mask_url(one.strip())!r}") from None
            if not parts.hostname and not (parts.scheme.startswith("postgres") and parts.query):
                raise _Invalid(f"has no host: {mask_url(one.strip())!r}")
        return raw

    return parse


def _event_loop(raw: str) -> str:
    value = raw.strip().lower()
    if value not in EVENT_LOOPS:
        raise _Invalid(f"must be one of {', '.join(EVENT_LOOPS)}, got {raw!r}")
    return value


def _level(raw: str) -> str:
    value = raw.strip().lower()
    if value not in LOG_LEVELS:
        raise _Invalid(f"must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return value


_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _prefix(raw: str) -> str:
    # The prefix is one subject token and, upper-cased, the start of the stream names.
    if not _PREFIX.fullmatch(raw):
        raise _Invalid(f"must be 1-64 letters, digits, '_' or '-', got {raw!r}")
    return raw


def _subject(raw: str) -> str:
    if not _SUBJECT.fullmatch(raw):
        raise _Invalid(f"must be dot-separated subject tokens without wildcards, got {raw!r}")
    return raw


def _server_name(raw: str) -> str:
    if not is_valid_server_name(raw):
        raise _Invalid(f"must be a Matrix server name (host[:port]), got {raw!r}")
    return raw


def _room_version(raw: str) -> str:
    if raw not in ROOM_VERSIONS:
        raise _Invalid(f"must be a known room version (1 to 12), got {raw!r}")
    return raw


def _addr(raw: str) -> tuple[str, int]:
    host, sep, port_text = raw.strip().rpartition(":")
    if not sep or not host:
        raise _Invalid(f"must be HOST:PORT, got {raw!r}")
    host = host.strip("[]")
    port = _int_in(0, 65535)(port_text)
    return host, port


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One setting: environment name, place in the tree, parser, documentation."""

    name: str
    section: str  # "" for top-level fields of Settings
    field: str
    parse: Callable[[str], Any]
    default: str
    help: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("NATS_URL", "nats", "url", _url(("nats", "tls", "ws", "wss")), "",
             "NATS server URL(s), comma-separated. Unset: start the embedded nats-server."),
    Variable("NATS_USER", "nats", "user", _optional, "", "NATS user name (with NATS_PASSWORD)."),
    Variable("NATS_PASSWORD", "nats", "password", _optional, "", "NATS password.", secret=True),
    Variable("NATS_TOKEN", "nats", "token", _optional, "", "NATS auth token.", secret=True),
    Variable("NATS_NKEY_SEED_FILE", "nats", "nkey_seed_file", _optional, "",
             "File holding an NKey seed to authenticate with."),
    Variable("NATS_CREDS_FILE", "nats", "creds_file", _optional, "",
             "NATS credentials file (JWT and NKey seed)."),
    Variable("NATS_TLS_CA", "nats", "tls_ca", _optional, "", "CA bundle to verify the server."),
    Variable("NATS_TLS_CERT", "nats", "tls_cert", _optional, "",
             "Client certificate for mutual TLS (with NATS_TLS_KEY)."),
    Variable("NATS_TLS_KEY", "nats", "tls_key", _optional, "", "Client certificate's key."),
    Variable("EMBEDDED_NATS_PORT", "nats", "embedded_port", _int_in(0, 65535), "14222",
             "Port of the embedded nats-server (0: any free port)."),
    Variable("DATABASE_URL", "database", "url", _url(("postgres", "postgresql")), "",
             "PostgreSQL DSN. Unset: start the embedded PostgreSQL."),
    Variable("EMBEDDED_PG_PORT", "database", "embedded_port", _int_in(0, 65535), "15432",
             "Port of the embedded PostgreSQL (0: any free port)."),
    Variable("DATABASE_POOL_MIN", "database", "pool_min_size", _int_in(1, 1000), "2",
             "Connections the pool keeps open."),
    Variable("DATABASE_POOL_MAX", "database", "pool_max_size", _int_in(1, 1000), "10",
             "Most connections the pool opens."),
    Variable("ROOMSERVER_PREFIX", "bus", "prefix", _prefix, "roomserver",
             "Prefix of every subject; upper-cased, of the stream names."),
    Variable("SHARDS", "bus", "shards", _int_in(1, 1024), "4",
             "Input shards (fixed per deployment)."),
    Variable("STREAM_REPLICAS", "bus", "stream_replicas", _int_in(0, 5), "0",
             "Replicas of the three streams (3 on a 3-node NATS cluster); 0 keeps what they have."),
    Variable("MAX_RETRIES", "bus", "max_retries", _int_in(0, 1000), "5",
             "Deliveries of a message failing transiently before it is dead-lettered."),
    Variable("RETRY_BACKOFF", "bus", "retry_backoff", _float_in(0.0, 3600.0), "2.0",
             "Base redelivery delay in seconds after a transient failure (grows per attempt)."),
    Variable("FEDERATION_PREFIX", "bus", "federation_prefix", _subject, "federation.request",
             "Subject prefix of gap-filling requests to the federation service."),
    Variable("METRICS_ADDR", "http", "", _addr, "127.0.0.1:9464",
             "HOST:PORT of /metrics, /healthz and /readyz (port 0: any free port)."),
    Variable("LOG_LEVEL", "", "log_level", _level, "info", "debug, info, warning or error."),
    Variable("EVENT_LOOP", "", "event_loop", _event_loop, "uvloop",
             "uvloop, or asyncio for Python's own loop (slower; where uvloop is missing)."),
    Variable("DATA_DIR", "", "data_dir", _text, "./var",
             "Where the embedded servers keep their data."),
    Variable("DRAIN_GRACE_SECONDS", "", "drain_grace_seconds", _float_in(0.0, 3600.0), "30",
             "On SIGTERM, how long in-flight rooms may take to finish."),
    Variable("CACHE_STATE_ENTRIES", "", "cache_state_entries", _int_in(10_000, 100_000_000),
             "2000000", "State snapshot entries cached (about 100 bytes each); the queries "
             "keep a quarter as many."),
    Variable("CACHE_EVENTS", "", "cache_events", _int_in(100, 10_000_000), "20000",
             "Parsed events cached (about 2 KB each); the queries keep a quarter as many."),
    Variable("CACHE_EVENT_IDS", "", "cache_event_ids", _int_in(1_000, 100_000_000), "500000",
             "Event ID <-> NID pairs cached (about 200 bytes each)."),
    Variable("HISTORY_RETENTION_DAYS", "", "history_retention_days", _int_in(0, 36500), "0",
             "Purge events older than this many days from every room, on a schedule "
             "(0: keep all history)."),
    Variable("RETENTION_EVENTS_PER_RUN", "", "retention_events_per_run",
             _int_in(1, 10_000_000), "10000",
             "Most events one retention run deletes; the next run goes on from there."),
    Variable("RETENTION_INTERVAL_SECONDS", "", "retention_interval_seconds",
             _float_in(1.0, 604800.0), "3600", "Seconds between retention runs."),
    Variable("CONFIG_FILE", "", "config_file", _optional, "",
             "Optional TOML file with the same keys; the environment overrides it."),
    Variable("SERVER_NAME", "", "server_name", _server_name, "localhost",
             "This homeserver's name: whose users are local, and the server of the events "
             "this roomserver builds and signs."),
    Variable("SIGNING_KEY_FILE", "", "signing_key_file", _optional, "",
             "ed25519 key file (Synapse's format); unset: DATA_DIR/signing.key, made on "
             "first start."),
    Variable("DEFAULT_ROOM_VERSION", "", "default_room_version", _room_version, "12",
             "Room version of rooms created without one."),
)
_BY_NAME = {v.name: v for v in VARIABLES}


def _from_file(path: str, problems: list[ConfigProblem]) -> dict[str, str]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(ConfigProblem("CONFIG_FILE", f"cannot read {path}: {exc.strerror}"))
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(ConfigProblem("CONFIG_FILE", f"{path} is not valid TOML: {exc}"))
        return {}
    values: dict[str, str] = {}
    for key, value in data.items():
        name = key.upper()
        if name not in _BY_NAME or name == "CONFIG_FILE":
            problems.append(ConfigProblem(key, f"unknown setting in {path}"))
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(ConfigProblem(name, f"must be a string or a number in {path}"))
        else:
            values[name] = str(value)
    return values


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The effective settings from `env` (default: os.environ) and CONFIG_FILE.

    Raises ConfigError listing every invalid setting.
    """
    environ = os.environ if env is None else env
    problems: list[ConfigProblem] = []
    raw: dict[str, str] = {}
    config_file = environ.get("CONFIG_FILE") or None
    if config_file:
        raw.update(_from_file(config_file, problems))
    raw.update({k: v for k, v in environ.items() if k in _BY_NAME})
    sections: dict[str, dict[str, Any]] = {"nats": {}, "database": {}, "bus": {}, "http": {},
                                           "": {}}
    for var in VARIABLES:
        text = raw.get(var.name, var.default)
        try:
            value = var.parse(text)
        except _Invalid as exc:
            problems.append(ConfigProblem(var.name, str(exc)))
            continue
        if var.name == "METRICS_ADDR":
            sections["http"]["host"], sections["http"]["port"] = value
        else:
            sections[var.section][var.field] = value
    # Fields that failed to parse keep their defaults, so the cross-field checks below still
    # run and the operator sees every problem in one go.
    settings = Settings(
        nats=NatsSettings(**sections["nats"]),
        database=DatabaseSettings(**sections["database"]),
        bus=BusSettings(**sections["bus"]),
        http=HttpSettings(**sections["http"]),
        **sections[""],
    )
    reported = {p.setting for p in problems}
    problems += [p for p in check(settings) if p.setting not in reported]
    if problems:
        raise ConfigError(problems)
    return settings


def load_or_report(env: Mapping[str, str] | None = None) -> Settings | None:
    """`load_settings`, printing the problems to stderr and returning None when invalid."""
    try:
        return load_settings(env)
    except ConfigError as exc:
        print(f"roomserver: {exc}", file=sys.stderr)
        return None


def check(s: Settings) -> list[ConfigProblem]:
    """Problems that involve several settings or the file system."""
    problems: list[ConfigProblem] = []
    n = s.nats

    def bad(name: str, message: str) -> None:
        problems.append(ConfigProblem(name, message))

    if bool(n.user) != bool(n.password):
        bad("NATS_USER" if n.password else "NATS_PASSWORD",
            "NATS_USER and NATS_PASSWORD must be set together")
    methods = [name for name, on in (("NATS_USER", n.user), ("NATS_TOKEN", n.token),
                                     ("NATS_NKEY_SEED_FILE", n.nkey_seed_file),
                                     ("NATS_CREDS_FILE", n.creds_file)) if on]
    if len(methods) > 1:
        bad(methods[1], f"choose one NATS authentication method, got {', '.join(methods)}")
    if bool(n.tls_cert) != bool(n.tls_key):
        bad("NATS_TLS_KEY" if n.tls_cert else "NATS_TLS_CERT",
            "NATS_TLS_CERT and NATS_TLS_KEY must be set together")
    for name, path in (("NATS_NKEY_SEED_FILE", n.nkey_seed_file),
                       ("NATS_CREDS_FILE", n.creds_file), ("NATS_TLS_CA", n.tls_ca),
                       ("NATS_TLS_CERT", n.tls_cert), ("NATS_TLS_KEY", n.tls_key)):
        if path and not Path(path).is_file():
            bad(name, f"file not found: {path}")
    if n.url is None and (methods or n.tls_ca or n.tls_cert):
        bad("NATS_URL", "NATS credentials or TLS are set but NATS_URL is not; the embedded "
            "server uses neither: set NATS_URL or unset them")
    if s.database.pool_min_size > s.database.pool_max_size:
        bad("DATABASE_POOL_MIN", f"must not exceed DATABASE_POOL_MAX "
            f"({s.database.pool_max_size}), got {s.database.pool_min_size}")
    embedded = {}
    if n.url is None and n.embedded_port:
        embedded["EMBEDDED_NATS_PORT"] = n.embedded_port
    if s.database.url is None and s.database.embedded_port:
        embedded["EMBEDDED_PG_PORT"] = s.database.embedded_port
    if s.http.port:
        embedded["METRICS_ADDR"] = s.http.port
    seen: dict[int, str] = {}
    for name, port in embedded.items():
        if port in seen:
            bad(name, f"port {port} is already used by {seen[port]}")
        seen[port] = name
    return problems


# --- masking -----------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """`url` with any password (in the authority or a `password=` parameter) replaced."""
    parts = []
    for one in url.split(","):
        p = urlsplit(one)
        netloc = p.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _pw = userinfo.partition(":")
            # A lone userinfo in a NATS URL is a token: mask it too.
            netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
            if p.scheme.startswith("postgres") and not colon:
                netloc = f"{userinfo}@{hostport}"
        query = p.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if k.lower() in ("password", "token") else v)
                               for k, v in pairs], safe="*")
        parts.append(urlunsplit((p.scheme, netloc, p.path, query, p.fragment)))
    return ",".join(parts)


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret hidden, for printing and logging."""
    data: dict[str, Any] = msgspec.to_builtins(settings)
    for var in VARIABLES:
        if var.secret and var.section and data[var.section][var.field]:
            data[var.section][var.field] = MASK
    for section in ("nats", "database"):
        if data[section]["url"]:
            data[section]["url"] = mask_url(data[section]["url"])
    return data


def signing_key_path(settings: Settings) -> Path:
    """The key file the worker signs with: SIGNING_KEY_FILE, else DATA_DIR/signing.key."""
    if settings.signing_key_file:
        return Path(settings.signing_key_file)
    return Path(settings.data_dir) / "signing.key"


__all__ = [
    "EXIT_CONFIG",
    "VARIABLES",
    "BusSettings",
    "ConfigError",
    "ConfigProblem",
    "DatabaseSettings",
    "HttpSettings",
    "NatsSettings",
    "Settings",
    "Variable",
    "check",
    "load_or_report",
    "load_settings",
    "mask_url",
    "masked",
    "signing_key_path",
]
