"""`peftstd serve`: serve exports over HTTP, in one process or in Ray Serve replicas (`--engine ray`)."""

from __future__ import annotations

import argparse

HELP = ("serve exports over HTTP: batched, authenticated, /v1 JSON, KServe V2 and OpenAI routes; --engine ray for "
        "autoscaled replicas (`peftstd serve keys ...` manages API keys)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peftstd.serve.config import add_flags

    parser.add_argument("exports", nargs="+", metavar="EXPORT", help="export folder, or NAME=FOLDER")
    parser.add_argument("--config", help="serve settings YAML; the flags below override it")
    add_flags(parser)


def run(args: argparse.Namespace) -> int:
    from peftstd.serve.config import load_serve_config
    from peftstd.serve.server import model_names, serve

    cfg = load_serve_config(args.config, args)
    if cfg.engine == "ray":
        from peftstd.serve.ray_engine import serve_on_ray

        return serve_on_ray(cfg, model_names(args.exports))
    return serve(cfg, model_names(args.exports))
