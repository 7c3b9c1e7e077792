"""`peftstd bench`: latency/throughput of every backend of a run or export, side by side."""

from __future__ import annotations

import argparse

from peftstd.errors import UserError

HELP = "latency/throughput of every backend of a run or export, side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", help="run directory or export folder")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes (default %(default)s)")
    parser.add_argument("--sequences", default="32,128", help="sequence lengths (default %(default)s)")
    parser.add_argument("--threads", type=int, help="intra-op threads for every backend (default: torch's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per grid cell (default %(default)s)")
    parser.add_argument("--backends", help="comma-separated subset, e.g. pytorch-fp32,onnxruntime-int8-dynamic")
    parser.add_argument("--device", default="cpu", help="device of the PyTorch backends: cpu or cuda (default %(default)s)")
    parser.add_argument("--out", help="results folder (default TARGET/bench)")
    parser.add_argument("--peers", choices=["optimum"], help="also time optimum's int8 of the same run at its best (every CPU preset, "
                        "per-channel on and off; text classification) and report peftstd's pick, as served, against the fastest")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print B's ratios to A instead of running")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.bench.run import compare, run_bench

    if args.compare:
        for row in compare(Path(args.compare[0]), Path(args.compare[1])):
            print(f"{row['backend']:<28} batch {row['batch']:>3} seq {row['sequence']:>4}  "
                  f"p50 x{row['p50_ratio']:.2f}  throughput x{row['throughput_ratio']:.2f}")
        return 0
    if not args.target:
        raise UserError("peftstd bench needs a TARGET (run or export folder) or --compare A.json B.json")
    target = Path(args.target)
    run_bench(target, Path(args.out) if args.out else target / "bench", parse_ints(args.batches, "--batches"),
              parse_ints(args.sequences, "--sequences"), args.threads, args.repeats,
              set(args.backends.split(",")) if args.backends else None, args.device, args.peers)
    return 0

def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values
