"""A download cache pinned by sha256: third-party data is fetched at run time, never committed."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from peftstd.basics.atomic import atomic_path
from peftstd.basics.hashing import sha256_file
from peftstd.errors import DataError


def cache_dir() -> Path:
    """`$PEFTSTD_CACHE`, else `$XDG_CACHE_HOME/peftstd`, else `~/.cache/peftstd`."""
    if os.environ.get("PEFTSTD_CACHE"):
        return Path(os.environ["PEFTSTD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peftstd"


def fetch(url: str, sha256: str, filename: str) -> Path:
    """The cached file for `url`, downloaded once and verified against `sha256`."""
    target = cache_dir() / "downloads" / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=120) as response:
            tmp.write_bytes(response.read())
            got = sha256_file(tmp)
            if got != sha256:
                raise DataError(f"download of {url} has sha256 {got}, expected {sha256}; refusing to use it")
    except OSError as error:
        raise DataError(f"could not download {url} into {target.parent}: {error}") from None
    return target
