"""API keys: several, each with a name and scopes, stored only as sha256 hashes, compared in constant time.

A key is 32 random bytes (URL-safe base64 behind a `pst_` prefix), so an unsalted sha256 is enough: there is
nothing to brute-force, and a leaked key file gives no key back. The file is YAML, written atomically, readable
by its owner only.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from peftstd.basics.atomic import write_text
from peftstd.errors import UserError

SCOPES = ("infer", "read", "metrics", "admin")  # admin implies every other scope
PREFIX = "pst_"


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    created: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise UserError(f"unknown scope {unknown[0]!r}; allowed: {', '.join(SCOPES)}" if unknown else
                        f"--scopes needs at least one of {', '.join(SCOPES)}")
    return scopes


def read_keys(path: Path) -> list[Key]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"key file {str(path)!r} does not exist; create it with `peftstd serve keys add NAME --keys {path}`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        keys = [Key(k["name"], k["sha256"], tuple(k["scopes"]), str(k.get("created", ""))) for k in data.get("keys", [])]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as error:
        raise UserError(f"key file {str(path)!r} is malformed ({type(error).__name__}); expected `keys: [{{name, sha256, scopes}}]`") from None
    for key in keys:
        if not set(key.scopes) <= set(SCOPES) or len(key.sha256) != 64:
            raise UserError(f"key {key.name!r} in {str(path)!r} has an unknown scope or a malformed hash")
    return keys


def write_keys(path: Path, keys: list[Key]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"keys": [{"name": k.name, "sha256": k.sha256, "scopes": list(k.scopes), "created": k.created} for k in keys]},
                          sort_keys=False)
    write_text(path, text)
    os.chmod(path, 0o600)


def add_key(path: Path, name: str, scopes: tuple[str, ...]) -> str:
    """A new key for `name`, stored as its hash; the key itself is returned once and never stored."""
    keys = read_keys(path) if Path(path).is_file() else []
    if any(k.name == name for k in keys):
        raise UserError(f"a key named {name!r} exists already; revoke it first or choose another name")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"key name {name!r} must be letters, digits, '-', '_' or '.'")
    key = PREFIX + secrets.token_urlsafe(32)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_keys(path, [*keys, Key(name, digest(key), scopes, created)])
    return key


def revoke_key(path: Path, name: str) -> None:
    keys = read_keys(path)
    if not any(k.name == name for k in keys):
        raise UserError(f"no key named {name!r} in {str(path)!r}; keys: {', '.join(k.name for k in keys) or 'none'}")
    write_keys(path, [k for k in keys if k.name != name])


class KeyRing:
    """The keys a server accepts, re-read when the file changes (a revoked key stops working without a restart)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.mtime = 0.0
        self.keys: list[Key] = []
        self.refresh()

    def refresh(self) -> None:
        mtime = self.path.stat().st_mtime if self.path.exists() else 0.0
        if mtime != self.mtime:
            self.keys, self.mtime = read_keys(self.path), mtime

    def find(self, presented: str) -> Key | None:
        """The key whose hash matches; every stored hash is compared, each in constant time."""
        try:
            self.refresh()
        except (OSError, UserError):
            pass  # keep the last good keys while the file is being rewritten
        wanted = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        return found
