"""`peftstd export`: merge, prune, convert to ONNX, quantize, and verify a finished run."""

from __future__ import annotations

import argparse

HELP = "merge, prune, convert to ONNX, quantize, and verify a finished run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="finished run directory")
    parser.add_argument("--profile", help="export profile YAML (see export/*.yaml); flags below override it")
    parser.add_argument("--int8", action="store_true", help="also produce int8 artifacts")
    parser.add_argument("--fp16", action="store_true", help="also produce an fp16 artifact (GPU targets)")
    parser.add_argument("--prune", type=float, help="share of encoder FLOPs to remove by structured pruning (e.g. 0.4)")
    parser.add_argument("--target", choices=["cpu", "gpu"], help="where the artifact will run (default cpu)")
    parser.add_argument("--format", choices=["onnx", "tensorrt", "gguf"], help="artifact format (default onnx; gguf: causal-LM runs, for llama.cpp and Ollama)")
    parser.add_argument("--gguf-types", nargs="+", metavar="TYPE", help="GGUF types to write and gate (default f16 q8_0 q4_k_m)")
    parser.add_argument("--cpu-int8", nargs="+", choices=["dynamic", "static", "nncf"], metavar="SCHEME",
                        help="CPU int8 schemes with --int8: dynamic, static, nncf (default dynamic nncf)")
    parser.add_argument("--budget", type=float, help="largest allowed metric drop in points (default 1.0)")
    parser.add_argument("--out", help="export folder (default RUN/export, RUN/export-gguf for --format gguf)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.export.pipeline import export_run
    from peftstd.export.profile import load_profile

    overrides = {"int8": args.int8 or None, "fp16": args.fp16 or None, "prune": args.prune, "target": args.target,
                 "format": args.format, "budget": args.budget, "gguf_types": args.gguf_types,
                 "cpu_int8": args.cpu_int8}
    profile = load_profile(args.profile, overrides)
    run = Path(args.run)
    default = run / ("export-gguf" if profile.format == "gguf" else "export")  # beside an ONNX export, not over it
    return export_run(run, Path(args.out) if args.out else default, profile)
