#!/usr/bin/env python
"""Generation speed of a causal-LM or seq2seq export against PyTorch, interleaved in one run.

    python bench/generate_speed.py RUN EXPORT_DIR [--prompts 8] [--new-tokens 32] [--repeats 3] [--out bench/results/NAME]

Greedy decoding at batch 1 of the run's first held-out test prompts, every backend forced to produce exactly
`--new-tokens` tokens through its KV cache: PyTorch eager fp32 (the merged model), PyTorch bf16 autocast, and
each artifact of the export folder through optimum's ORTModel class (fp32 and, when exported, `int8/`). Reports
milliseconds per generated token (p50 over prompts x repeats) and the speed-up over PyTorch fp32, beside the
gate's perplexity figures from export.json. Writes NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import provenance, write_report

from peftstd.export.merge import merge
from peftstd.runtime.engines import load_generative, quiet
from peftstd.runtime.load import load_run
from peftstd.runtime.taskdata import run_splits
from peftstd.tasks import get_task


def render(result: dict) -> str:
    """The markdown table of a result, with the gate's parity and decoding-agreement figures."""
    gate = result["gate"]
    lines = [f"# Generation speed: `{Path(result['run']).name}` export", "", f"Command: `{result['command']}`", "",
             f"{result['machine'].get('cpu', 'CPU')}, {result['threads']} threads; greedy decoding at batch 1 of the first {result['prompts']} "
             f"test prompts, {result['new_tokens']} new tokens each through the KV cache, {result['repeats']} interleaved repeats. "
             f"Test perplexity from the export gate (trained model: {gate['trained_metric']:.4f}, {gate['examples']} test examples).", "",
             "| backend | ms / token (p50) | speed-up vs PyTorch fp32 | test perplexity | size MB |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        perplexity = f"{row['test_perplexity']:.4f}" if row["test_perplexity"] is not None else "-"
        size = f"{row['size_mb']:.0f}" if row["size_mb"] is not None else "-"
        lines.append(f"| {row['backend']} | {row['ms_per_token_p50']:.1f} | {row['speedup_vs_pytorch_fp32']:.2f}x | {perplexity} | {size} |")
    lines += ["", "Export gate (`export.json`):", ""]
    for record in gate["artifacts"]:
        parity = f"max |Δlogit| {record['max_abs_logit_difference']:.1e} teacher-forced, " if "max_abs_logit_difference" in record else ""
        lines.append(f"- {record['artifact']}: {parity}perplexity {record['drop_points']:+.2f}%, greedy decoding of "
                     f"{record['decoding']['prompts']} prompts identical for {100 * record['decoding']['identical_share']:.0f}%, "
                     f"max step-score difference {record['decoding']['max_abs_score_difference']:.1e}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("export_dir")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/generate_speed")
    args = parser.parse_args()
    run, folder = Path(args.run), Path(args.export_dir)

    loaded = load_run(run)
    cfg, splits = run_splits(run, loaded.manifest)
    task = get_task(loaded.manifest["task"]["type"])
    report = json.loads((folder / "export.json").read_text())
    merged, _ = merge(loaded.model)
    with quiet():
        artifacts = {f"onnxruntime-{r['artifact']}": load_generative(folder / r["file"], task, report["stages"]["onnx"]["kv_cache"],
                                                                   spinning=False)
                     for r in report["gate"]["artifacts"]}

    def pytorch(bf16: bool):
        def generate(**batch):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return merged.generate(**batch)
        return generate

    backends = {"pytorch-fp32": pytorch(False), "pytorch-bf16": pytorch(True),
                **{name: artifact.generate for name, artifact in artifacts.items()}}
    prompts = list(task.prompt_batches(loaded.tokenizer, splits.test[: args.prompts], 1, cfg.model.max_length))
    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False, "num_beams": 1,
                "pad_token_id": loaded.tokenizer.pad_token_id}
    times: dict[str, list[float]] = {name: [] for name in backends}
    with torch.inference_mode(), quiet():
        for generate in backends.values():  # warm-up
            generate(**prompts[0], **settings)
        for _ in range(args.repeats):
            for batch in prompts:
                for name, generate in backends.items():
                    started = time.perf_counter()
                    generate(**batch, **settings)
                    times[name].append(1000 * (time.perf_counter() - started) / args.new_tokens)

    gate = {r["artifact"]: r for r in report["gate"]["artifacts"]}
    baseline = statistics.median(times["pytorch-fp32"])
    rows = []
    for name, values in times.items():
        record = gate.get(name.removeprefix("onnxruntime-"), {})
        rows.append({"backend": name, "ms_per_token_p50": statistics.median(values), "speedup_vs_pytorch_fp32": baseline / statistics.median(values),
                     "test_perplexity": record.get("value"), "size_mb": report["sizes_mb"].get(record.get("file"))})
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "run": str(run), "export": str(folder), "prompts": args.prompts, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "trained_perplexity": report["gate"]["trained_metric"], "gate": report["gate"],
              **provenance(), "rows": rows, "raw_ms_per_token": times}
    write_report(Path(args.out), result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
