"""LLM serving on this CPU: `peftstd serve`'s continuous batching (OpenAI routes, streamed) against the server of an
earlier commit (one prompt at a time through optimum's `generate`) and llama.cpp's own `llama-server` (continuous
batching over `--parallel` slots, the peer a CPU user picks) on the same merged weights as GGUF files, then LoRA
runs of one base served side by side.

    python bench/llm_serve.py RUN EXPORT --adapters RUN_A RUN_B --baseline-rev f38d19d --artifacts fp32 int8-weights \
        --llama-server BIN --gguf F32.gguf Q8_0.gguf --out bench/results/llm_serve

The peer is llama.cpp's own `llama-server`, as a CPU user would run it at its best: built for this CPU
(-DGGML_NATIVE=ON), every core for decoding and for prompts, `-np` slots decoded together (continuous batching) as
many as the highest concurrency. llama-cpp-python's OpenAI server wraps the same library but answers one request
at a time, and optimum's ORTModelForCausalLM behind a plain server is our earlier server's engine. llama-server is
built from the llama.cpp source that the llama-cpp-python sdist vendors; the GGUF files come from the run's merged
model through bench/llama_cpp_peer.py (that source's convert_hf_to_gguf.py and llama-quantize).

Throughput: the run's chat test prompts, greedy, exactly `--new-tokens` each (past the end-of-turn token: vLLM's
and llama-server's `ignore_eos`; the earlier server, which has no such switch, serves a copy of the export whose
generation config sets `min_new_tokens`), or with `--natural-stop` at most that many, at each concurrency (closed
loop); tokens/s = generated tokens / wall time; time to first token from the request to its first streamed token (the
earlier server does not stream: its TTFT is the whole answer). Both serve the same export and artifact.
Adapters: resident memory (RSS) of one process serving 1 and 8 adapter names (the given runs repeated under new
names) against one process serving the merged export under 8 names; tokens/s of 8 concurrent requests to one
adapter against the same 8 spread over 8 adapters (mixed-adapter batches).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import REPO, machine_line, provenance, write_report

from peftstd.basics.ports import free_port

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def start(models: list[str], cwd: Path = REPO, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**ENV, "PYTHONPATH": str(cwd)}
    # a request waiting its turn is no failure here: the deadline is past any wait a closed loop makes
    command = [sys.executable, "-m", "peftstd", "serve", *models, "--port", str(port), "--deadline-ms", "600000", *extra]
    return wait_ready(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port, "/v2/health/ready")


def start_llama(binary: str, gguf: str, slots: int, context: int) -> tuple[subprocess.Popen, str]:
    """llama-server on every core, `slots` sequences decoded together (continuous batching), `context` tokens per slot,
    the GGUF's own chat template (--jinja)."""
    port, threads = free_port(), str(os.cpu_count() or 1)
    command = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", threads, "-tb", threads, "-np", str(slots),
               "-c", str(slots * context), "--jinja", "--no-webui"]
    return wait_ready(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port, "/health")


def wait_ready(process: subprocess.Popen, port: int, path: str) -> tuple[subprocess.Popen, str]:
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server {process.args[:6]} exited {process.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("server not ready in 300 s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


IGNORE_EOS = {"ignore_eos": True}  # emptied by --natural-stop


def streamed(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds in all, tokens) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **IGNORE_EOS}
    started, first, count, chunks = time.perf_counter(), None, None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                count = event["usage"]["completion_tokens"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                chunks += 1
                first = first if first is not None else time.perf_counter() - started
    total = time.perf_counter() - started
    return (first if first is not None else total), total, count if count is not None else chunks


def whole(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """The same for the earlier server's /v1 predict route, which answers only when done."""
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/models/{model}/predict", json={"inputs": [{"prompt": prompt, "max_new_tokens": tokens}]}, timeout=600)
    response.raise_for_status()
    seconds = time.perf_counter() - started
    return seconds, seconds, response.json()["outputs"][0]["tokens"]


def fixed_length_copy(export: Path, artifact_folder: Path, tokens: int, out: Path) -> Path:
    """The export as symbolic links, with the artifact's generation config asking for at least `tokens` new tokens:
    the earlier server's `generate` then runs past the end-of-turn token, as `ignore_eos` does for the others."""
    subprocess.run(["cp", "-rs", str(export.resolve()), str(out)], check=True)
    config = out / artifact_folder / "generation_config.json"
    settings = json.loads(config.read_text()) if config.exists() else {}
    config.unlink(missing_ok=True)
    config.write_text(json.dumps({**settings, "min_new_tokens": tokens}))
    return out


def closed_loop(call, url: str, models: list[str], prompts: list[str], tokens: int, concurrency: int) -> dict:
    """Every prompt once, `concurrency` at a time; model i % len(models) for prompt i."""
    results, failed, lock, index = [], [], threading.Lock(), iter(range(len(prompts)))

    def user():
        while True:
            with lock:
                i = next(index, None)
            if i is None:
                return
            try:
                results.append(call(url, models[i % len(models)], prompts[i], tokens))
            except (httpx.HTTPError, KeyError, ValueError) as error:
                failed.append(f"{type(error).__name__}: {error}")

    started = time.perf_counter()
    threads = [threading.Thread(target=user) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    generated = sum(r[2] for r in results)
    if failed:
        print(f"{len(failed)} requests failed, e.g. {failed[0]}", flush=True)
    return {"concurrency": concurrency, "requests": len(results), "failed": len(failed), "tokens": generated, "seconds": wall, "tokens_per_s": generated / wall,
            "ttft_p50_s": ttft[len(ttft) // 2], "ttft_p99_s": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]}


def rss_mb(process: subprocess.Popen) -> float:
    import psutil

    return psutil.Process(process.pid).memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("export")
    parser.add_argument("--adapters", nargs="+", required=True, help="LoRA runs of the export's base")
    parser.add_argument("--baseline-rev", required=True, help="the commit whose server is 'today'")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--artifacts", nargs="+", default=["fp32"], help="export artifacts peftstd serves (the earlier server: the first)")
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (the peer)")
    parser.add_argument("--gguf", nargs="*", default=[], help="the run's merged model as GGUF files for llama-server, in the "
                        "order of --artifacts (each compared with the artifact of its precision)")
    parser.add_argument("--natural-stop", action="store_true", help="answers end at the end-of-turn token (at most --new-tokens)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.export, args.adapters = str(Path(args.export).resolve()), [str(Path(a).resolve()) for a in args.adapters]
    if args.natural_stop:
        IGNORE_EOS.clear()

    prompts = [json.loads(line)["prompt"] for line in (Path(args.run) / "predictions" / "test.jsonl").read_text().splitlines()]
    prompts = (prompts * (args.prompts // len(prompts) + 1))[: args.prompts]
    report = {**provenance(), "prompts": len(prompts), "new_tokens": args.new_tokens, "fixed_length": not args.natural_stop,
              "baseline_rev": args.baseline_rev, "throughput": {},
              "baseline": f"peftstd serve at {args.baseline_rev[:7]}, {args.artifacts[0]} (one prompt at a time)"}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        from peftstd.runtime.folders import ExportFolder

        export = ExportFolder(args.export)
        base_export = args.export if args.natural_stop else str(fixed_length_copy(
            Path(args.export), export.artifact_path(args.artifacts[0]).relative_to(export.path), args.new_tokens, Path(tmp) / "export"))
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline_rev], cwd=REPO, check=True, capture_output=True)
        try:
            systems = [(f"peftstd serve, {a} (continuous batching)", lambda a=a: start([f"m={args.export}"], extra=("--artifact", a)), streamed)
                       for a in args.artifacts]
            systems.insert(1, (report["baseline"], lambda: start([f"m={base_export}"], baseline, ("--artifact", args.artifacts[0])), whole))
            systems += [(f"llama-server {Path(g).stem} (-np {max(args.concurrency)}, continuous batching)",
                         lambda g=g: start_llama(args.llama_server, g, max(args.concurrency), 256), streamed) for g in args.gguf]
            for system, launch, call in systems:
                process, url = launch()
                try:
                    call(url, "m", prompts[0], 4)  # warm
                    report["throughput"][system] = [closed_loop(call, url, ["m"], prompts, args.new_tokens, c) for c in args.concurrency]
                    print(system, json.dumps(report["throughput"][system]), flush=True)
                finally:
                    stop(process)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True)

    adapters = [args.adapters[i % len(args.adapters)] for i in range(8)]
    memory = {}
    for label, models in (("1 adapter (pytorch base + LoRA)", [f"a0={adapters[0]}"]),
                          ("8 adapters, one base (pytorch)", [f"a{i}={a}" for i, a in enumerate(adapters)]),
                          ("1 merged export (onnxruntime)", [f"m0={args.export}"]),
                          ("8 merged exports (onnxruntime)", [f"m{i}={args.export}" for i in range(8)])):
        process, url = start(models)
        try:
            for name in [m.split("=")[0] for m in models]:
                streamed(url, name, prompts[0], 8)
            memory[label] = {"models": len(models), "rss_mb": rss_mb(process)}
            if label.startswith("8 adapters"):
                names = [m.split("=")[0] for m in models]
                report["adapters_throughput"] = {"one adapter": closed_loop(streamed, url, names[:1], prompts[:32], args.new_tokens, 8),
                                                 "8 adapters mixed": closed_loop(streamed, url, names, prompts[:32], args.new_tokens, 8)}
            print(label, memory[label], flush=True)
        finally:
            stop(process)
    report["memory"] = memory
    write_report(args.out, report, markdown(report))


def markdown(report: dict) -> str:
    systems = list(report["throughput"])
    today = report["throughput"][report["baseline"]]
    lines = ["# LLM serving: continuous batching, OpenAI routes, adapters", "", f"`{report['command']}`", "",
             machine_line(report), "", f"{report['prompts']} chat test prompts, greedy, {report['new_tokens']} new tokens each, "
             f"{'exactly that many (ignore_eos; the earlier server: min_new_tokens)' if report['fixed_length'] else 'ending at the end-of-turn token'}; "
             "closed loop; every system serves the run's merged model (peftstd: the export's ONNX decoder, the artifact named; "
             "llama-server: the same weights as GGUF, f32 and Q8_0). Ratios are tokens/s against the earlier peftstd server.", "",
             "| concurrency | system | tokens/s | TTFT p50 (s) | TTFT p99 (s) | tokens | failed | ratio tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for level, base in enumerate(today):
        for system in systems:
            r = report["throughput"][system][level]
            lines.append(f"| {r['concurrency']} | {system} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | "
                         f"{r['tokens']} | {r['failed']} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x |")
    ours = [s for s in systems if s.startswith("peftstd serve, ")]
    peers = [s for s in systems if s.startswith("llama-server")]
    if peers:
        lines += ["", f"The peer: llama.cpp's llama-server built for this CPU (-DGGML_NATIVE=ON, from the source the llama-cpp-python "
                  f"sdist vendors), {report['machine']['cores']} threads for decoding and for prompts (-t, -tb), "
                  f"{peers[0].split('(-np ')[1].split(',')[0]} slots decoded together, 256 tokens of context per slot, the "
                  "GGUF's chat template (--jinja), `ignore_eos` as above.", "",
                  "| peftstd serve / llama-server at the same precision | " + " | ".join(f"c={r['concurrency']}" for r in today) + " |",
                  "|---|" + "---|" * len(today)]
        for mine, peer in zip(ours, peers):
            ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(report["throughput"][mine], report["throughput"][peer])]
            lines.append(f"| {mine.split(' (')[0]} / {peer.split(' (')[0]} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    memory = report["memory"]
    one = memory["1 adapter (pytorch base + LoRA)"]["rss_mb"]
    lines += ["", "| served | resident memory (MB) | vs 1 adapter |", "|---|---|---|"]
    lines += [f"| {label} | {m['rss_mb']:.0f} | {m['rss_mb'] / one:.2f}x |" for label, m in memory.items()]
    mixed = report["adapters_throughput"]
    lines += ["", "| 8 concurrent requests | tokens/s | TTFT p50 (s) |", "|---|---|---|"]
    lines += [f"| {label} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} |" for label, r in mixed.items()]
    lines += ["", f"Mixed-adapter batches: {mixed['8 adapters mixed']['tokens_per_s'] / mixed['one adapter']['tokens_per_s']:.2f}x "
              "the tokens/s of one adapter alone at the same concurrency."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
