"""`peftstd triton`: write an export as a Triton Inference Server model repository."""

from __future__ import annotations

import argparse

from peftstd.commands.arguments import positive_int

HELP = "write an export as a Triton Inference Server model repository"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="EXPORT")
    parser.add_argument("--out", required=True, help="folder for model_repository/ and tokenizers/")
    parser.add_argument("--name", help="model name (default: the run's name)")
    parser.add_argument("--artifact", default="auto", help="int8-static or fp32 (default: the first that passed, in that order)")
    parser.add_argument("--instances", type=positive_int, default=1, help="model instances (instance_group count)")
    parser.add_argument("--max-batch-size", type=positive_int, default=32)
    parser.add_argument("--max-queue-delay-us", type=positive_int, default=500, help="dynamic batching's wait for more requests")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.export.triton import write_repository
    from peftstd.runtime.folders import ExportFolder

    export = Path(args.export_dir)
    name = args.name or ExportFolder(export).name
    target = write_repository(export, Path(args.out), name, args.artifact, args.instances, args.max_batch_size, args.max_queue_delay_us)
    print(f"written: {target} (Triton model repository: tritonserver --model-repository {target.parent}); "
          f"tokenizer: {Path(args.out) / 'tokenizers' / name}")
    return 0
