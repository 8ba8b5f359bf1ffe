"""The signing key file: read it, or make it on first start when it is the default one.

Every worker process of a deployment must sign with the same key, so a key file that was
named explicitly (SIGNING_KEY_FILE) and is missing is an error, never a reason to make a
new key; only the default, `<DATA_DIR>/signing.key`, is generated when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.core.signing import KeyFileError, ServerKey, new_key_file, parse_key_file


class SigningKeyError(Exception):
    """The key file cannot be used; the message names the file and says why."""


def load_signing_key(path: Path, server_name: str, *, create: bool) -> ServerKey:
    """The key of `path`; with `create`, a new key is written there first if it is absent."""
    if create and not path.exists():
        _write_new(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise SigningKeyError(f"signing key file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"signing key file {path} is unreadable: {exc}") from None
    try:
        return parse_key_file(text, server_name)
    except KeyFileError as exc:
        raise SigningKeyError(f"signing key file {path} is malformed: {exc}") from None


def _write_new(path: Path) -> None:
    """Write a new key, readable by its owner only. It is written to a temporary file and
    hard-linked into place, which never replaces a key another process put there meanwhile:
    two workers starting at once on one data directory read the same key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(new_key_file(os.urandom(32), os.urandom(4)))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise SigningKeyError(f"cannot create signing key file {path}: {exc}") from None


__all__ = ["SigningKeyError", "load_signing_key"]
