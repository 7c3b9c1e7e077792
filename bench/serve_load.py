"""Load benchmark of `peftstd serve` on loopback, beside the engine alone and a hand-written server, in one run.

    python bench/serve_load.py runs/latest/export --out bench/results

1. Engines alone (no HTTP): every gated artifact (fp32, int8 dynamic, int8 static) on every runtime (ONNX Runtime,
   OpenVINO), in one stream and in two, through the same predictor the server uses, at batch 1 (p50 per text,
   tokenization included) and in batches of 32 (texts/s): the ceiling, and the choice of the serving default.
2. `peftstd serve` at its defaults, and on each runtime in the configuration fastest alone: closed loops at
   concurrency 1, 8, 32, 128 (each a bounded number of requests of one text), then an open loop at a fixed rate
   above capacity.
3. The server a user writes by hand: FastAPI + transformers `pipeline("text-classification")` on the trained
   PyTorch model (LoRA merged), one request at a time per call, the same closed loops.

Every loop is bounded in requests and seconds and talks only to 127.0.0.1. Writes serve_load.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import provenance, write_report

from peftstd.basics.ports import free_port
from peftstd.runtime.folders import ExportFolder, RunFolder

HAND = "FastAPI + transformers pipeline (PyTorch {precision})"
# The hand-written server at its defaults (fp32) and at its best setting on this CPU: bf16 autocast, which `peftstd bench`
# measured 2x faster than fp32 at batch 1 here (native avx512_bf16). Ratios are taken against the faster of the two.
HAND_PRECISIONS = ("fp32", "bf16 autocast")
HAND_WRITTEN = '''
import sys, torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline
from peftstd.runtime.load import load_run
from peftstd.export.merge import merge

torch.set_num_threads({threads})
loaded = load_run(sys.argv[1])
model, _ = merge(loaded.model)
model.config.id2label = dict(enumerate(loaded.labels))
classify = pipeline("text-classification", model=model.eval(), tokenizer=loaded.tokenizer, device="cpu", truncation=True,
                    max_length={max_length})
app = FastAPI()

class Request(BaseModel):
    inputs: list[str]

@app.post("/predict")
def predict(request: Request):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):
        return {{"outputs": classify(request.inputs)}}
'''


def wait_ready(url: str, process: subprocess.Popen, path: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code in (200, 405):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)  # also while it answers 503 (loading), not a busy loop against the server it waits for
    raise SystemExit(f"{url} not ready after {timeout} s")


def percentiles(latencies: list[float]) -> dict:
    values = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


class Connection:
    """A minimal HTTP/1.1 keep-alive client connection on loopback. The load generator shares the 2 cores with the
    server, and httpx's AsyncClient took 5 ms of CPU per request at concurrency 32 and 15 ms at 128 (measured),
    more than the server: a generator that heavy measures itself. This one sends a POST and reads the response's
    status line, headers and Content-Length body, nothing else."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        reused = self.writer is not None
        if not reused:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                              % (path.encode(), self.host.encode(), len(body), body))
            line = await self.reader.readline()
        except ConnectionError:
            if not reused:
                raise
            line = b""
        if not line and reused:  # the server closed this idle keep-alive connection before answering: send again, as HTTP clients do
            self.close()
            return await self.post(path, body)
        status = int(line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def split_url(url: str) -> tuple[str, int, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname, parts.port, parts.path


async def closed_loop(url: str, texts: list[str], concurrency: int, requests: int, seconds: float) -> dict:
    """`concurrency` clients, each sending one-text requests back to back, until `requests` or `seconds`."""
    host, port, path = split_url(url)
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    latencies, statuses, sent = [], {}, 0
    stop = time.monotonic() + seconds

    async def user(index: int):
        nonlocal sent
        connection = Connection(host, port)
        try:
            while sent < requests and time.monotonic() < stop:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                status = await connection.post(path, body)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            connection.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(user(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    ok, total = statuses.get(200, 0), sum(statuses.values())
    return {"concurrency": concurrency, "requests": total, "seconds": elapsed, "requests_per_s": ok / elapsed,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, **percentiles(latencies),
            "client_cpu_ms_per_request": cpu / max(total, 1) * 1000}  # the load generator's own share of the cores


async def open_loop(url: str, texts: list[str], rate: float, seconds: float, max_in_flight: int = 512) -> dict:
    """Requests sent at a fixed rate regardless of answers (above capacity), for `seconds`, each on a connection
    of its own from a pool; statuses and latencies of the answered and of the rejected ones."""
    host, port, path = split_url(url)
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    results: list[tuple[int, float]] = []
    idle: list[Connection] = []
    in_flight = 0

    async def one(body: bytes):
        nonlocal in_flight
        connection = idle.pop() if idle else Connection(host, port)
        started = time.perf_counter()
        try:
            status = await connection.post(path, body)
            idle.append(connection)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
            status = f"no response ({type(error).__name__})"
            connection.close()
        results.append((status, time.perf_counter() - started))
        in_flight -= 1

    tasks, started, i, skipped = [], time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds:
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        if in_flight < max_in_flight:
            in_flight += 1
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        else:
            skipped += 1
        i += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in idle:
        connection.close()
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"rate": rate, "seconds": elapsed, "sent": len(results), "not_sent_over_in_flight_cap": skipped, "statuses": statuses,
            "ok_per_s": statuses.get("200", 0) / elapsed,
            "ok": percentiles([t for s, t in results if s == 200]),
            "rejected": percentiles([t for s, t in results if s in (429, 503)])}


def run_batches(pool, predictor, batches: list, streams: int) -> None:
    """Every batch, `streams` at once: each of the pool's threads takes every `streams`-th batch."""
    list(pool.map(lambda k: [predictor.run(b) for b in batches[k::streams]], range(streams)))


def batched_rate(pool, predictor, batches: list, streams: int) -> float:
    """Texts/s of one pass over every batch."""
    started = time.perf_counter()
    run_batches(pool, predictor, batches, streams)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def paired_rounds(export: Path, engine: dict, route: str, texts: list[str], threads: int, rounds: int, requests: int) -> dict:
    """The ratio the target is about, measured in alternation: the fastest engine alone (one pass in batches of 32),
    then the server at concurrency 32, `rounds` times. On a shared machine the speed drifts between a benchmark's
    sections; pairs taken seconds apart see the same machine, and their spread is reported."""
    from concurrent.futures import ThreadPoolExecutor

    from peftstd.runtime.choice import load_predictor

    predictor = load_predictor(export, engine["artifact"], engine["runtime"], threads, streams=engine["streams"])
    items = sorted((predictor.encode(t) for t in texts), key=lambda item: item.length)
    batches = [items[start : start + 32] for start in range(0, len(items), 32)]
    pool = ThreadPoolExecutor(engine["streams"])
    run_batches(pool, predictor, batches, engine["streams"])  # warm up
    pairs = []
    for _ in range(rounds):
        alone = batched_rate(pool, predictor, batches, engine["streams"])
        served = asyncio.run(closed_loop(route, texts, 32, requests, 30))["requests_per_s"]
        pairs.append({"engine_texts_per_s": alone, "server_requests_per_s": served, "ratio": served / alone})
        print(f"round: engine alone {alone:.0f} texts/s, server c=32 {served:.0f} req/s, ratio {served / alone:.2f}", file=sys.stderr, flush=True)
    pool.shutdown()
    ratios = [p["ratio"] for p in pairs]
    return {"engine": engine, "server_requests": requests, "pairs": pairs, "median_ratio": float(np.median(ratios)), "min_ratio": min(ratios), "max_ratio": max(ratios)}


def engines_alone(export: Path, texts: list[str], threads: int, repeats: int) -> list[dict]:
    """Each artifact on each runtime, in one stream and in two (the threads split between two concurrent calls, as
    the server runs them): p50 of one text at a time, and texts/s in batches of 32 of similar length (sorted, as the
    server's batcher groups them; with two streams, two batches at once; tokenization excluded, as it happens on
    arrival). The best-configured engine is the ceiling."""
    from concurrent.futures import ThreadPoolExecutor

    from peftstd.runtime.choice import load_predictor
    from peftstd.runtime.engines import RUNTIMES

    rows = []
    for record in ExportFolder(export).artifacts().values():  # the shipped ones
        for runtime in (rt for rt in RUNTIMES if record.passed_on(rt)):
            for streams in (1, 2):
                predictor = load_predictor(export, record.artifact, runtime, threads, streams=streams)
                items = sorted((predictor.encode(t) for t in texts), key=lambda item: item.length)
                batches = [items[start : start + 32] for start in range(0, len(items), 32)]
                pool = ThreadPoolExecutor(streams)
                run_batches(pool, predictor, batches, streams)  # warm up: every shape once
                single = []
                for text in texts[:200]:
                    started = time.perf_counter()
                    predictor.predict([text])
                    single.append(time.perf_counter() - started)
                best = max(batched_rate(pool, predictor, batches, streams) for _ in range(repeats))
                pool.shutdown()
                rows.append({"artifact": record.artifact, "runtime": runtime, "streams": streams,
                             "batch_independent": predictor.batch_independent,
                             "batch1_p50_ms": float(np.median(single) * 1000), "batch32_texts_per_s": best,
                             "test_metric": record.value if runtime == "onnxruntime" else (record.openvino.value if record.openvino else None)})
                print(f"engine {runtime} {record.artifact} x{streams}: batch-1 p50 {rows[-1]['batch1_p50_ms']:.2f} ms, "
                      f"batch 32 {best:.0f} texts/s", file=sys.stderr, flush=True)
                del predictor
    return rows


def served_engines(folder: ExportFolder, engines: list[dict]) -> list[dict]:
    """The server at its defaults first, then on each runtime the engine configuration that was fastest alone (the
    predictor runs a batch-dependent artifact's rows one at a time, so every artifact serves batch-independently)."""
    from peftstd.runtime.choice import choose_artifact
    from peftstd.serve.server import default_streams

    record, runtime = choose_artifact(folder)
    default = next(r for r in engines if (r["artifact"], r["runtime"], r["streams"]) == (record.artifact, runtime, default_streams(None)))
    served = [default]
    for runtime in dict.fromkeys(r["runtime"] for r in engines):
        best = max((r for r in engines if r["runtime"] == runtime), key=lambda r: r["batch32_texts_per_s"])
        if best not in served:
            served.append(best)
    return served


def server_name(engine: dict, default: bool) -> str:
    return (f"peftstd serve ({engine['artifact']}, {engine['runtime']}, {engine['streams']} stream{'s' * (engine['streams'] > 1)}"
            + (", its defaults)" if default else ")"))


def serve_process(export: Path, artifact: str, runtime: str, threads: int, streams: int, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "peftstd", "serve", f"m={export}", "--port", str(port), "--artifact", artifact,
                             "--runtime", runtime, "--threads", str(threads), "--streams", str(streams)], cwd=REPO, stdout=subprocess.DEVNULL,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def hand_written_process(run: Path, threads: int, max_length: int, port: int, folder: Path, bf16: bool) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline_server.py").write_text(HAND_WRITTEN.format(threads=threads, max_length=max_length, bf16=bf16))
    code = (f"import sys, uvicorn; sys.path.insert(0, {str(folder)!r}); sys.path.insert(0, {str(REPO)!r}); sys.argv[1:] = [{str(run)!r}]; "
            f"import pipeline_server; uvicorn.run(pipeline_server.app, host='127.0.0.1', port={port}, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="export folder of a text-classification run")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--requests", type=int, default=1500, help="requests per closed-loop level at most")
    parser.add_argument("--seconds", type=float, default=30, help="seconds per closed-loop level at most")
    parser.add_argument("--open-seconds", type=float, default=15, help="seconds of the open loop")
    parser.add_argument("--open-factor", type=float, default=2.0, help="open-loop rate as a multiple of the concurrency-32 rate")
    parser.add_argument("--texts", type=int, default=512, help="test texts used (the run's test split, in order)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds of fastest engine alone vs the default server at c=32")
    parser.add_argument("--round-requests", type=int, default=2000, help="requests of the server's part of each paired round")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    export = Path(args.export).resolve()
    folder = ExportFolder(export)
    run = folder.source_run
    texts = [r["text"] for r in RunFolder(run.path).test_predictions()][: args.texts]
    levels = [int(c) for c in args.concurrency.split(",")]
    result = {**provenance(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "export": str(export), "texts": len(texts), "mean_words": float(np.mean([len(t.split()) for t in texts])),
              "threads": args.threads}

    result["engines"] = engines_alone(export, texts, args.threads, args.repeats)
    result["fastest_engine"] = max(result["engines"], key=lambda r: r["batch32_texts_per_s"])
    served = served_engines(folder, result["engines"])
    result["served_engines"] = served

    with tempfile.TemporaryDirectory() as scratch:
        candidates = [(server_name(r, i == 0),
                       lambda port, r=r: serve_process(export, r["artifact"], r["runtime"], args.threads, r["streams"], port), "/v2/health/ready", r)
                      for i, r in enumerate(served)]
        candidates += [(HAND.format(precision=precision),
                        lambda port, bf16=precision != "fp32": hand_written_process(run.path, args.threads, folder.max_length, port,
                                                                                      Path(scratch) / ("bf16" if bf16 else "fp32"), bf16),
                        "/predict", None) for precision in HAND_PRECISIONS]
        for name, start, path, engine in candidates:
            port = free_port()
            process = start(port)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, process, path)
                route = url + ("/v1/models/m/predict" if engine else "/predict")
                asyncio.run(closed_loop(route, texts, 8, 200, 10))  # warm up
                rows = []
                for level in levels:
                    rows.append(asyncio.run(closed_loop(route, texts, level, args.requests, args.seconds)))
                    print(f"{name} c={level}: {rows[-1]['requests_per_s']:.1f} req/s p50 {rows[-1]['p50_ms']:.1f} ms "
                          f"{rows[-1]['statuses']}", file=sys.stderr, flush=True)
                result.setdefault("servers", {})[name] = {"engine": engine, "rows": rows}
                if engine is served[0] and args.rounds:
                    result["paired_rounds"] = paired_rounds(export, result["fastest_engine"], route, texts, args.threads, args.rounds,
                                                             args.round_requests)
                if engine:
                    at32 = next((r for r in rows if r["concurrency"] == 32), rows[-1])
                    result.setdefault("open_loop", {})[name] = asyncio.run(
                        open_loop(route, texts, args.open_factor * at32["requests_per_s"], args.open_seconds))
                    print(f"{name} open loop: {result['open_loop'][name]['statuses']}", file=sys.stderr, flush=True)
            finally:
                process.terminate()
                process.wait(timeout=60)

    summarize(result)
    write_report(Path(args.out) / "serve_load", result, markdown(result))
    chart(result, Path(args.out) / "serve_load.png")
    return 0


def summarize(result: dict) -> None:
    best_hand = max((HAND.format(precision=p) for p in HAND_PRECISIONS),
                    key=lambda name: next((r["requests_per_s"] for r in result["servers"][name]["rows"] if r["concurrency"] == 32), 0))
    result["best_hand_written"] = best_hand
    hand = {r["concurrency"]: r for r in result["servers"][best_hand]["rows"]}
    fastest = result["fastest_engine"]
    result["targets"] = {}
    for name, server in result["servers"].items():
        if server["engine"] is None:
            continue
        rows = {r["concurrency"]: r for r in server["rows"]}
        result["targets"][name] = {
            "c32_vs_hand_written": rows[32]["requests_per_s"] / hand[32]["requests_per_s"] if 32 in rows and 32 in hand else None,
            "c32_vs_fastest_engine": rows[32]["requests_per_s"] / fastest["batch32_texts_per_s"] if 32 in rows else None,
            "c32_vs_own_engine": rows[32]["requests_per_s"] / server["engine"]["batch32_texts_per_s"] if 32 in rows else None,
            "c1_p50_minus_engine_batch1_p50_ms": rows[1]["p50_ms"] - server["engine"]["batch1_p50_ms"] if 1 in rows else None,
            "c1_p50_minus_best_batch1_p50_ms": rows[1]["p50_ms"] - best_batch1(result["engines"], server["engine"]) if 1 in rows else None,
            "open_loop_other_than_200_429_503": sum(v for k, v in result["open_loop"][name]["statuses"].items() if k not in ("200", "429", "503")),
        }


def best_batch1(engines: list[dict], engine: dict) -> float:
    """The lowest batch-1 p50 of the server's artifact on its runtime, in any stream configuration."""
    return min(r["batch1_p50_ms"] for r in engines if (r["artifact"], r["runtime"]) == (engine["artifact"], engine["runtime"]))


def client_cpu(result: dict) -> str:
    """The load generator's CPU per request at concurrency 32 against the default server, as measured."""
    name = next(iter(result["servers"]))
    row = next((r for r in result["servers"][name]["rows"] if r["concurrency"] == 32), None)
    if row is None:  # --concurrency without 32
        return "its CPU per request reported at concurrency 32 only"
    return f"{row['client_cpu_ms_per_request']:.2f} ms of CPU per request at concurrency 32 against {name}"


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [f"# peftstd serve under load: `{Path(result['export']).name}`", "", f"`{result['command']}`", "",
             f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['isa'])}), {result['threads']} threads; "
             f"onnxruntime {result['versions'].get('onnxruntime')}, openvino {result['versions'].get('openvino')}, "
             f"torch {result['versions'].get('torch')}; {result['created']}. {result['texts']} test texts "
             f"(mean {result['mean_words']:.1f} words), one text per request; the load generator (a minimal asyncio HTTP/1.1 "
             f"client, {client_cpu(result)}) and the servers share the machine's cores.", "",
             "## Engines alone (no HTTP)", "",
             "Batch 1: one text at a time, tokenization included. Batch 32: rows sorted by length in batches of 32, as the "
             "server's batcher groups them, tokenization excluded (it happens on arrival).", "",
             "| artifact | runtime | streams | batch-independent | batch 1 p50 ms | batch 32 texts/s | test metric |", "|---|---|---|---|---|---|---|"]
    for r in result["engines"]:
        metric = f"{r['test_metric']:.4f}" if r["test_metric"] is not None else "-"
        lines.append(f"| {r['artifact']} | {r['runtime']} | {r['streams']} | {'yes' if r['batch_independent'] else 'no (rows run one at a time)'} | "
                     f"{r['batch1_p50_ms']:.2f} | {r['batch32_texts_per_s']:.0f} | {metric} |")
    fastest = result["fastest_engine"]
    lines += ["", f"Fastest engine: {fastest['artifact']} on {fastest['runtime']}, {fastest['streams']} stream(s). Served: the "
              "server at its defaults, then on each runtime the configuration fastest alone.", "",
              "## Closed loops", "", "| server | concurrency | requests | requests/s | p50 ms | p95 ms | p99 ms | statuses |",
              "|---|---|---|---|---|---|---|---|"]
    for name, server in result["servers"].items():
        for r in server["rows"]:
            lines.append(f"| {name} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['statuses']} |")
    lines += ["", "## Open loop above capacity", ""]
    for name, o in result.get("open_loop", {}).items():
        lines.append(f"- {name}: {o['rate']:.0f} requests/s for {o['seconds']:.1f} s ({o['sent']} sent): statuses {o['statuses']}; "
                     f"{o['ok_per_s']:.1f} answered/s; answered p50 {o['ok']['p50_ms']:.1f} ms, p99 {o['ok']['p99_ms']:.1f} ms; "
                     f"rejected p50 {o['rejected']['p50_ms']:.1f} ms, p99 {o['rejected']['p99_ms']:.1f} ms.")
    lines += ["", "## Against the targets", ""]
    if "paired_rounds" in result:
        paired = result["paired_rounds"]
        lines += [f"Paired rounds ({len(paired['pairs'])}, alternating, seconds apart): the server at its defaults at concurrency 32 "
                  f"({paired['server_requests']} requests) / "
                  f"the fastest engine alone ({paired['engine']['artifact']}, {paired['engine']['runtime']}, {paired['engine']['streams']} "
                  f"stream(s)) in batches of 32: median **{paired['median_ratio']:.2f}**, range {paired['min_ratio']:.2f}-"
                  f"{paired['max_ratio']:.2f} (target 0.8). Each pair: " + ", ".join(
                      f"{p['server_requests_per_s']:.0f}/{p['engine_texts_per_s']:.0f}" for p in paired["pairs"]) + ".", ""]
    for name, t in result["targets"].items():
        lines += [f"{name}:",
                  f"- concurrency 32 / the faster hand-written pipeline server ({result['best_hand_written']}): "
                  f"**{t['c32_vs_hand_written']:.2f}x** (target 3x)",
                  f"- concurrency 32 / fastest engine alone at batch 32: **{t['c32_vs_fastest_engine']:.2f}** (target 0.8); "
                  f"/ its own engine alone: {t['c32_vs_own_engine']:.2f}",
                  f"- concurrency 1 p50 minus its engine's batch-1 p50: **{t['c1_p50_minus_engine_batch1_p50_ms']:+.2f} ms** (target within 2 ms); "
                  f"minus the artifact's best batch-1 p50 in any stream configuration: {t['c1_p50_minus_best_batch1_p50_ms']:+.2f} ms",
                  f"- open loop, responses other than 200/429/503: **{t['open_loop_other_than_200_429_503']}** (target 0)", ""]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, server in result["servers"].items():
        rows = server["rows"]
        axes[0].plot([r["concurrency"] for r in rows], [r["requests_per_s"] for r in rows], "o-", label=name)
        axes[1].plot([r["concurrency"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=name)
    axes[0].axhline(result["fastest_engine"]["batch32_texts_per_s"], color="grey", linestyle="--", label="fastest engine alone, batch 32")
    axes[0].set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 ms", title="tail latency")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
