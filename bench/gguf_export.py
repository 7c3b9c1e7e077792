#!/usr/bin/env python
"""GGUF files in llama.cpp against the ONNX int8 artifact on ONNX Runtime: size, load time, prompt and generation
speed at batch 1, and the export gate's test perplexity, interleaved in one run.

    python bench/gguf_export.py RUN --gguf RUN/export-gguf --onnx RUN/export [--also OTHER/export-gguf ...]
        [--prompts 8] [--new-tokens 64] [--repeats 3] [--out bench/results/gguf_export]

Every backend decodes the run's first held-out test prompts greedily, one at a time, and is made to produce
exactly `--new-tokens` tokens. Prompt speed: prompt tokens over the time to the first new token; generation
speed: the other new tokens over the time they took. llama.cpp runs through llama-cpp-python (what
`peftstd predict` uses); ONNX Runtime through optimum's ORTModelForCausalLM with its KV cache, with thread spinning
on (`peftstd predict`'s setting) and off, the ratios taken against the faster. Both use every core. `--also` adds the gate table of other GGUF exports (the QLoRA run). Writes NAME.json and NAME.md.
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

from provenance import machine_line, provenance, write_report

from peftstd.runtime.engines import load_generative, quiet
from peftstd.runtime.gguf_model import llama_cpp, open_gguf
from peftstd.runtime.load import load_run
from peftstd.runtime.taskdata import run_splits
from peftstd.tasks import get_task


def llama_cpp_backend(path: Path, context: int):
    """(load seconds, generate(ids, n) -> seconds at each new token) for a GGUF file."""
    started = time.perf_counter()
    model = open_gguf(path, context)
    loaded = time.perf_counter() - started

    def generate(ids: list[int], new_tokens: int) -> list[float]:
        stamps, start = [], time.perf_counter()
        for token in model.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            stamps.append(time.perf_counter() - start)
            if len(stamps) == new_tokens:
                break
        return stamps

    return loaded, generate


def onnx_backend(folder: Path, task, kv_cache: bool, pad_token_id: int, spinning: bool):
    """The same for an ONNX artifact folder; the time of each token comes from a streamer."""
    from transformers.generation.streamers import BaseStreamer

    started = time.perf_counter()
    with quiet():
        model = load_generative(folder, task, kv_cache, spinning=spinning)
    loaded = time.perf_counter() - started

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.start, self.prompt_seen = [], time.perf_counter(), False

        def put(self, value):
            if self.prompt_seen:  # the first call carries the prompt
                self.stamps.append(time.perf_counter() - self.start)
            self.prompt_seen = True

        def end(self):
            pass

    def generate(ids: list[int], new_tokens: int) -> list[float]:
        streamer = Stamps()
        batch = torch.tensor([ids])
        with quiet(), torch.inference_mode():
            model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, num_beams=1, pad_token_id=pad_token_id, streamer=streamer)
        return streamer.stamps

    return loaded, generate


def gate_rows(report: dict) -> list[dict]:
    return [{"artifact": r["artifact"], "file": r["file"], "perplexity": r["value"], "rise_percent": r["drop_points"], "budget": r.get("budget_points"),
             "tokenized_identically": r.get("tokenizer", {}).get("identical_share"), "decoded_identically": r["decoding"]["identical_share"],
             "size_mb": report["sizes_mb"].get(r["file"]), "passed": r["passed"], "shipped": r.get("shipped", True)} for r in report["gate"]["artifacts"]]


def render(result: dict) -> str:
    lines = [f"# GGUF export of `{Path(result['run']).name}`: llama.cpp against ONNX Runtime", "", f"Command: `{result['command']}`", "",
             f"{machine_line(result)}; llama-cpp-python {result['versions'].get('llama_cpp_python', '?')}, onnxruntime "
             f"{result['versions'].get('onnxruntime', '?')}; {result['threads']} threads each. Greedy decoding at batch 1 of the first "
             f"{result['prompts']} test prompts (p50 {result['prompt_tokens_p50']} tokens), {result['new_tokens']} new tokens each, "
             f"{result['repeats']} interleaved repeats; medians. Perplexity: the export gate's, on {result['gate_examples']} test examples "
             f"(trained model {result['trained_perplexity']:.4f}).", "",
             "| artifact | runtime | size MB | load s | prompt tokens/s | generation tokens/s | vs the faster ONNX int8 (generation) | test perplexity | rise (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['artifact']} | {row['runtime']} | {row['size_mb']:.1f} | {row['load_s']:.2f} | {row['prompt_tokens_per_s']:.0f} | "
                     f"{row['generation_tokens_per_s']:.1f} | {row['generation_vs_onnx_int8']:.2f}x | {row['perplexity']:.4f} | {row['rise_percent']:+.2f} |")
    for name, rows in result["gates"].items():
        lines += ["", f"Export gate of `{name}` (`export.json`, llama.cpp):", "",
                  "| file | perplexity | rise (%) | budget (%) | tokenized identically | decoded identically | size MB | shipped |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            size = f"{r['size_mb']:.1f}" if r["size_mb"] is not None else "-"
            lines.append(f"| `{r['file']}` | {r['perplexity']:.4f} | {r['rise_percent']:+.2f} | {r['budget']:g} | {100 * r['tokenized_identically']:.0f}% | "
                         f"{100 * r['decoded_identically']:.0f}% | {size} | {'yes' if r['shipped'] and r['passed'] else 'no'} |")
        lines.append(f"\nExport stage times: {', '.join(f'{k} {v:.1f} s' for k, v in result['timings'][name].items())}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--also", type=Path, nargs="*", default=[])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/gguf_export")
    args = parser.parse_args()

    loaded = load_run(args.run)
    _, splits = run_splits(args.run, loaded.manifest)
    task = get_task("causal-lm")
    prompts = [task.prompt_ids(loaded.tokenizer, row) for row in splits.test[: args.prompts]]
    context = max(len(p) for p in prompts) + args.new_tokens + 1
    gguf, onnx = (json.loads((folder / "export.json").read_text()) for folder in (args.gguf, args.onnx))
    backends, rows = {}, {}
    for record in (r for r in gguf["gate"]["artifacts"] if r.get("shipped", True) and r["passed"]):
        backends[record["artifact"]] = llama_cpp_backend(args.gguf / record["file"], context)
        rows[record["artifact"]] = {"artifact": record["file"], "runtime": "llama.cpp", "size_mb": gguf["sizes_mb"][record["file"]],
                                    "perplexity": record["value"], "rise_percent": record["drop_points"]}
    int8 = next(r for r in onnx["gate"]["artifacts"] if r["artifact"] == "int8-weights")
    for spinning in (True, False):  # on: `peftstd predict`'s setting; off: what ONNX Runtime advises beside other work
        name = "onnx-int8" + ("" if spinning else "-no-spin")
        backends[name] = onnx_backend(args.onnx / int8["file"], task, onnx["stages"]["onnx"]["kv_cache"], loaded.tokenizer.pad_token_id, spinning)
        rows[name] = {"artifact": f"ONNX int8 (MatMulNBits, `int8/`), thread spinning {'on' if spinning else 'off'}", "runtime": "onnxruntime",
                      "size_mb": onnx["sizes_mb"][int8["file"]], "perplexity": int8["value"], "rise_percent": int8["drop_points"]}

    first, rest = {name: [] for name in backends}, {name: [] for name in backends}
    for _, generate in backends.values():
        generate(prompts[0], 4)  # warm-up
    for _ in range(args.repeats):
        for ids in prompts:
            for name, (_, generate) in backends.items():
                stamps = generate(ids, args.new_tokens)
                assert len(stamps) == args.new_tokens, (name, len(stamps))
                first[name].append(len(ids) / stamps[0])
                rest[name].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    for name, (load_s, _) in backends.items():
        rows[name].update(load_s=load_s, prompt_tokens_per_s=statistics.median(first[name]), generation_tokens_per_s=statistics.median(rest[name]))
    best_onnx = max(rows[name]["generation_tokens_per_s"] for name in ("onnx-int8", "onnx-int8-no-spin"))  # the peer at its best
    for row in rows.values():
        row["generation_vs_onnx_int8"] = row["generation_tokens_per_s"] / best_onnx
    exports = [args.gguf, *args.also]
    reports = {str(folder): json.loads((folder / "export.json").read_text()) for folder in exports}
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": str(args.run), "prompts": args.prompts,
              "prompt_tokens_p50": int(statistics.median(len(p) for p in prompts)), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "trained_perplexity": gguf["gate"]["trained_metric"], "gate_examples": gguf["gate"]["examples"],
              **provenance(llama_cpp_python=llama_cpp().__version__), "rows": list(rows.values()), "gates": {name: gate_rows(r) for name, r in reports.items()},
              "timings": {name: r["timings_s"] for name, r in reports.items()},
              "raw": {"prompt_tokens_per_s": first, "generation_tokens_per_s": rest}}
    write_report(Path(args.out), result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
