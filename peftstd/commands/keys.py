"""`peftstd serve keys add|list|revoke`: the API keys of a key file (its own parser: a word after `serve`)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """`peftstd serve keys add|list|revoke`: the API keys of a key file."""
    parser = argparse.ArgumentParser(prog="peftstd serve keys", description="Manage the API keys of a key file (hashes only).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create a key, print it once")
    add.add_argument("name", help="who the key is for (logged instead of the key)")
    add.add_argument("--scopes", default="infer,read", help="comma-separated: infer, read, metrics, admin (default %(default)s)")
    listing = sub.add_parser("list", help="names, scopes and dates of the keys")
    revoke = sub.add_parser("revoke", help="remove a key; a running server stops accepting it")
    revoke.add_argument("name")
    for command in (add, listing, revoke):
        command.add_argument("--keys", required=True, help="key file (YAML)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.serve.keys import add_key, parse_scopes, read_keys, revoke_key

    path = Path(args.keys)
    if args.action == "add":
        key = add_key(path, args.name, parse_scopes(args.scopes))
        print(key)
        print(f"key {args.name!r} added to {path}; it is shown only now (the file keeps its sha256)", file=sys.stderr)
    elif args.action == "revoke":
        revoke_key(path, args.name)
        print(f"key {args.name!r} revoked")
    else:
        for key in read_keys(path):
            print(f"{key.name}\t{','.join(key.scopes)}\t{key.created}")
    return 0
