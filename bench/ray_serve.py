"""`peftstd serve` on Ray Serve beside plain `peftstd serve`, on loopback, in one run.

    python bench/ray_serve.py runs/latest/export --out bench/results

1. Fixed replica counts, closed loop at concurrency 32 (requests/s, p50/p99), in alternating rounds: plain
   `peftstd serve` at its defaults (every core, two streams), Ray with one replica on every core (the engine's own
   overhead) behind Ray's Python proxy and behind its HAProxy ingress (what `--engine ray` starts), one replica on
   one CPU (the autoscaler's floor) and two 1-CPU replicas (its ceiling on 2 cores).
2. One 1-CPU replica at concurrency 1..32: where its requests/s stop growing is what `target_ongoing_requests`
   should aim at.
3. A timeline at the serve config's autoscaling defaults (min 1, max 2 replicas): idle, then concurrency 32, then
   idle again; replicas, requests/s, p99 and statuses per second. Writes ray_serve.{json,md,png}.

Every loop is bounded in seconds and talks only to 127.0.0.1; each server is stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import machine_line, provenance, write_report
from serve_load import Connection, closed_loop, free_port, split_url, wait_ready

from peftstd.runtime.folders import ExportFolder, RunFolder
from peftstd.serve.config import ServeConfig

ROUTE = "/v1/models/m/predict"
PYTHON_PROXY = "Ray Serve, 1 replica x 2 CPUs, Ray's Python proxy (its default ingress)"


class Server:
    """A `peftstd serve` process whose stdout is read as it comes (Ray's replica-count lines, stamped)."""

    def __init__(self, export: Path, *flags: str, env: dict[str, str] | None = None):
        self.port, self.metrics_port = free_port(), free_port()
        ray = ["--ray-metrics-port", str(self.metrics_port)] if "ray" in flags else []
        self.process = subprocess.Popen([sys.executable, "-m", "peftstd", "serve", f"m={export}", "--port", str(self.port),
                                         *flags, *ray], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, **(env or {})})
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self.read, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready()

    def read(self):
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip()))

    def wait_ready(self, timeout: float = 300) -> None:
        try:
            wait_ready(self.url, self.process, "/v2/health/ready", timeout)
        except SystemExit as error:
            raise SystemExit(f"{error}: {[line for _, line in self.lines][-20:]}") from None

    def replica_changes(self) -> list[tuple[float, int]]:
        """(time, replicas running) at each change of the count (the server prints every change of the states)."""
        changes: list[tuple[float, int]] = []
        for _, line in self.lines:
            if (m := re.search(r"replicas (\d+) at ([\d.]+)", line)) and (not changes or changes[-1][1] != int(m.group(1))):
                changes.append((float(m.group(2)), int(m.group(1))))
        return changes

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def timed_loop(url: str, texts: list[str], concurrency: int, seconds: float) -> list[tuple[float, float, object]]:
    """A closed loop for `seconds`: (wall time at the answer, latency, status) of every request."""
    host, port, path = split_url(url)
    bodies = [json.dumps({"inputs": [t]}).encode() for t in texts]
    records, stop, sent = [], time.monotonic() + seconds, 0

    async def user():
        nonlocal sent
        connection = Connection(host, port)
        while time.monotonic() < stop:
            body, sent = bodies[sent % len(bodies)], sent + 1
            started = time.perf_counter()
            try:
                status = await connection.post(path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                status = f"no response ({type(error).__name__})"
                connection.close()
            records.append((time.time(), time.perf_counter() - started, status))
        connection.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return records


def fixed_replicas(export: Path, texts: list[str], rounds: int, seconds: float) -> dict:
    one = ["--engine", "ray", "--min-replicas", "1", "--max-replicas", "1", "--replica-cpus", "2"]
    setups = {"peftstd serve (one process, every core, defaults)": [],
              PYTHON_PROXY: one,
              "Ray Serve, 1 replica x 2 CPUs": one,
              "Ray Serve, 1 replica x 1 CPU": ["--engine", "ray", "--min-replicas", "1", "--max-replicas", "1", "--replica-cpus", "1"],
              "Ray Serve, 2 replicas x 1 CPU": ["--engine", "ray", "--min-replicas", "2", "--max-replicas", "2", "--replica-cpus", "1"]}
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for round_ in range(rounds):
        for name, flags in setups.items():
            server = Server(export, *flags, env={"RAY_SERVE_ENABLE_HA_PROXY": "0"} if name == PYTHON_PROXY else None)
            try:
                asyncio.run(closed_loop(server.url + ROUTE, texts, 8, 400, 5))  # warm up
                row = asyncio.run(closed_loop(server.url + ROUTE, texts, 32, 10**6, seconds))
            finally:
                server.stop()
            results[name].append(row)
            print(f"round {round_ + 1} {name}: {row['requests_per_s']:.1f} req/s p99 {row['p99_ms']:.0f} ms {row['statuses']}",
                  file=sys.stderr, flush=True)
    return results


def knee(export: Path, texts: list[str], seconds: float) -> list[dict]:
    server = Server(export, "--engine", "ray", "--min-replicas", "1", "--max-replicas", "1", "--replica-cpus", "1")
    try:
        asyncio.run(closed_loop(server.url + ROUTE, texts, 8, 400, 5))
        rows = [asyncio.run(closed_loop(server.url + ROUTE, texts, c, 10**6, seconds)) for c in (1, 2, 4, 8, 16, 32)]
    finally:
        server.stop()
    for row in rows:
        print(f"1 replica c={row['concurrency']}: {row['requests_per_s']:.1f} req/s p50 {row['p50_ms']:.1f} ms", file=sys.stderr)
    return rows


def timeline(export: Path, texts: list[str], idle: float, busy: float, after: float) -> dict:
    """Autoscaling at the serve config's defaults: idle, a closed loop at concurrency 32, idle until one replica is left."""
    server = Server(export, "--engine", "ray")
    try:
        asyncio.run(closed_loop(server.url + ROUTE, texts, 1, 50, 5))
        start = time.time()
        time.sleep(idle)
        records = asyncio.run(timed_loop(server.url + ROUTE, texts, 32, busy))
        deadline = time.time() + after
        while time.time() < deadline and (not server.replica_changes() or server.replica_changes()[-1][1] > 1 or time.time() < records[-1][0] + 5):
            time.sleep(1)
        end = time.time()
    finally:
        server.stop()
    seconds = int(end - start) + 1
    per_second = []
    for s in range(seconds):
        inside = [(lat, status) for t, lat, status in records if start + s <= t < start + s + 1]
        answered = [lat for lat, status in inside if status == 200]
        per_second.append({"t": s, "requests": len(inside), "ok": len(answered),
                           "p99_ms": float(np.percentile(np.array(answered) * 1000, 99)) if answered else None})
    changes = [(t - start, n) for t, n in server.replica_changes()]
    statuses: dict[str, int] = {}
    for _, _, status in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"load_from_s": idle, "load_until_s": idle + busy, "replica_changes": changes, "per_second": per_second,
            "statuses": statuses, "requests": len(records)}


def markdown(report: dict) -> str:
    cfg = report["autoscaling_defaults"]
    lines = [f"# peftstd serve on Ray Serve: engine overhead, scale-out and autoscaling on {report['machine']['cores']} cores", "",
             f"`{report['command']}`", "", machine_line(report) + f"; ray {report['versions'].get('ray', '?')}", "",
             f"Export {report['export']} (MiniLM sentiment, int8 served by default), {report['texts']} test texts. "
             "Closed loops of one-text requests on 127.0.0.1; the client shares the cores with the servers. Plain `peftstd "
             "serve` runs at its defaults, int8-dynamic on ONNX Runtime in 2 streams: the fastest configuration in "
             "[serve_load.md](serve_load.md). Every Ray replica serves the same artifact. Ray is shown with its default "
             "Python proxy and with its HAProxy ingress, its fastest here.", "",
             f"## Fixed replicas at concurrency 32 ({report['rounds']} alternating rounds, median)", "",
             "| server | requests/s | ratio to peftstd serve | p50 ms | p99 ms | non-200 |", "|---|---|---|---|---|---|"]
    rows = report["fixed"]
    base = np.median([r["requests_per_s"] for r in next(iter(rows.values()))])
    for name, runs in rows.items():
        rate = np.median([r["requests_per_s"] for r in runs])
        bad = sum(v for r in runs for k, v in r["statuses"].items() if k != "200")
        lines.append(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {np.median([r['p50_ms'] for r in runs]):.1f} | "
                     f"{np.median([r['p99_ms'] for r in runs]):.1f} | {bad} |")
    lines += ["", "## One 1-CPU replica by concurrency (where target_ongoing_requests should aim)", "",
              "| concurrency | requests/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in report["knee"]]
    t = report["timeline"]
    counts = " -> ".join(str(n) for _, n in t["replica_changes"])
    lines += ["", f"## Autoscaling timeline at the defaults (min {cfg['min_replicas']}, max {cfg['max_replicas']}, target "
              f"{cfg['target_ongoing_requests']:g} requests per replica, up after {cfg['upscale_delay_s']:g} s, down after "
              f"{cfg['downscale_delay_s']:g} s, look-back {cfg['look_back_period_s']:g} s)", "",
              f"Concurrency 32 from {t['load_from_s']:g} s to {t['load_until_s']:g} s. Replicas: {counts}; "
              + ", ".join(f"{n} at {at:.1f} s" for at, n in t["replica_changes"]) + f". {t['requests']} requests, statuses "
              f"{t['statuses']}. ![timeline](ray_serve.png)", ""]
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report["timeline"]
    seconds = [row["t"] for row in t["per_second"]]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    steps = [(0.0, t["replica_changes"][0][1] if t["replica_changes"] else 1), *t["replica_changes"], (seconds[-1], None)]
    xs, ys = [], []
    for (at, n), (following, _) in itertools.pairwise(steps):
        xs += [at, following]
        ys += [n, n]
    top.plot(xs, ys, color="tab:blue")
    top.set_ylabel("replicas running")
    top.set_ylim(0, max(ys) + 1)
    middle.plot(seconds, [row["ok"] for row in t["per_second"]], color="tab:green")
    middle.set_ylabel("answered / s")
    bottom.plot(seconds, [row["p99_ms"] for row in t["per_second"]], color="tab:red")
    bottom.set_ylabel("p99 ms (per second)")
    bottom.set_xlabel("seconds")
    for axis in (top, middle, bottom):
        axis.axvspan(t["load_from_s"], t["load_until_s"], color="0.9")
    top.set_title(f"peftstd serve --engine ray: concurrency 32 in the shaded span ({machine_line(report)})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="export folder of a text-classification run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20, help="seconds per fixed-replica measurement")
    parser.add_argument("--knee-seconds", type=float, default=8)
    parser.add_argument("--busy", type=float, default=60, help="seconds of load in the timeline")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    export = Path(args.export).resolve()
    texts = [r["text"] for r in RunFolder(ExportFolder(export).source_run.path).test_predictions()][: args.texts]
    defaults = ServeConfig()
    report = {**provenance(ray=version("ray")), "export": str(export), "texts": len(texts), "rounds": args.rounds,
              "autoscaling_defaults": {k: getattr(defaults, k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests",
                                                                         "upscale_delay_s", "downscale_delay_s", "look_back_period_s")}}
    report["fixed"] = fixed_replicas(export, texts, args.rounds, args.seconds)
    report["knee"] = knee(export, texts, args.knee_seconds)
    report["timeline"] = timeline(export, texts, idle=10, busy=args.busy, after=defaults.downscale_delay_s + 60)
    write_report(Path(args.out) / "ray_serve", report, markdown(report))
    chart(report, Path(args.out) / "ray_serve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
