"""Prediction drift of the sentiment export on in-domain and shifted streams, offline and served.

Offline (`peftstd monitor`'s code): the held-out test split (the reference itself), the validation split (in-domain,
unseen), VADER texts of one class only, and texts of other domains (WNUT-2016 tweets, chatterbot prompts).
Served: one shifted stream sent to `peftstd serve` on 127.0.0.1 and its /metrics scraped, to show the server's
figures are the offline ones. Writes drift.json and drift.md.

    python bench/drift.py runs/latest/export --out bench/results
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

from provenance import machine_line, provenance

from peftstd.basics.atomic import write_json, write_text
from peftstd.runtime import drift
from peftstd.runtime.folders import ExportFolder


def streams(export: ExportFolder, n: int) -> dict[str, list[str]]:
    from peftstd.data.chatterbot import load_chatterbot_english
    from peftstd.data.vader import load_vader_movies
    from peftstd.data.wnut import load_wnut16
    from peftstd.runtime.taskdata import run_splits

    run = export.source_run
    _, splits = run_splits(run.path, run.raw_manifest)
    rng = random.Random(0)
    vader = load_vader_movies()
    by_class = {label: [r.text for r in vader if r.label == label] for label in export.labels}
    for texts in by_class.values():
        rng.shuffle(texts)
    return {"held-out test split (the reference)": [r.text for r in splits.test],
            "validation split (in-domain)": [r.text for r in splits.validation][:n],
            **{f"VADER, {label} only": texts[:n] for label, texts in by_class.items()},
            "WNUT-2016 tweets (other domain)": [" ".join(r.tokens) for r in load_wnut16()][:n],
            "chatterbot prompts (other domain)": [r.prompt for r in load_chatterbot_english()][:n]}


def served(export: Path, texts: list[str]) -> dict:
    """PSI at /metrics after `texts` went through a `peftstd serve` of the export."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import free_port, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "peftstd", "serve", f"m={export}", "--port", str(port),
                                "--drift-window", str(len(texts))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, process, "/v2/health/ready")
        for start in range(0, len(texts), 16):
            httpx.post(f"{url}/v1/models/m/predict", json={"inputs": texts[start : start + 16]}, timeout=60).raise_for_status()
        text = httpx.get(f"{url}/metrics", timeout=30).text
    finally:
        process.terminate()
        process.wait(timeout=60)
    found: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("peftstd_drift_psi", "peftstd_drift_js_distance"):
                found.setdefault(sample.labels["feature"], {})[sample.name.removeprefix("peftstd_drift_")] = sample.value
            elif sample.name == "peftstd_drift_window_size":
                found["window"] = sample.value
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="export folder of a text-classification run (with monitor.json)")
    parser.add_argument("--texts", type=int, default=1000, help="texts per stream at most")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    from peftstd.runtime.choice import load_predictor

    export_dir = Path(args.export).resolve()
    predictor = load_predictor(export_dir)
    reference = predictor.export.monitor
    if reference is None:
        raise SystemExit(f"{export_dir} has no monitor.json; re-export the run")
    result = {**provenance(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "export": str(export_dir), "artifact": predictor.record.artifact, "streams": {}}
    texts = streams(predictor.export, args.texts)
    for name, values in texts.items():
        figures = drift.compare(reference, drift.observe_inputs(predictor, values))
        for feature, found in figures.items():
            found["verdict"] = drift.verdict(feature, found)
        result["streams"][name] = {"n": len(values), "figures": figures}
        print(name, {f: (round(v["psi"], 3), v["verdict"]) for f, v in figures.items()}, flush=True)
    shifted = "VADER, negative only" if "VADER, negative only" in texts else next(k for k in texts if k.startswith("VADER"))
    result["served"] = {"stream": shifted, "figures": served(export_dir, texts[shifted])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "drift.json", result)
    write_text(out / "drift.md", markdown(result))
    print(f"written: {out / 'drift.json'}, {out / 'drift.md'}")
    return 0


def markdown(result: dict) -> str:
    features = ["label", "confidence", "length", "truncated", "unknown_tokens"]
    lines = [f"# Prediction drift of `{Path(result['export']).parent.name}` ({result['artifact']})", "", f"`{result['command']}`", "",
             f"{machine_line(result)}; {result['created']}. PSI (and Jensen-Shannon distance) of each feature against the "
             "export's monitor.json (its held-out test split). PSI below 0.1 no change, 0.1-0.25 moderate, above 0.25 major; "
             "JS distance above 0.1 is major for the categorical features (label, truncated, unknown_tokens).", "",
             "| stream | texts | " + " | ".join(features) + " | verdict |", "|---|---|" + "---|" * (len(features) + 1)]
    order = {"none": 0, "moderate": 1, "major": 2}
    for name, stream in result["streams"].items():
        figures = stream["figures"]
        cells = [f"{figures[f]['psi']:.3f} ({figures[f]['js']:.3f})" if f in figures else "" for f in features]
        worst = max((v["verdict"] for v in figures.values()), key=order.get)
        lines.append(f"| {name} | {stream['n']} | " + " | ".join(cells) + f" | **{worst}** |")
    served_figures = result["served"]["figures"]
    stream = result["streams"][result["served"]["stream"]]["figures"]
    gap = max(abs(served_figures[f]["psi"] - stream[f]["psi"]) for f in stream)
    lines += ["", f"Served: the stream *{result['served']['stream']}* sent to `peftstd serve` (16 texts per request, window "
              f"{served_figures['window']:.0f}); /metrics gave PSI "
              + ", ".join(f"{f} {served_figures[f]['psi']:.3f}" for f in features if f in served_figures)
              + f"; largest difference from the offline figures: {gap:.2e}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
