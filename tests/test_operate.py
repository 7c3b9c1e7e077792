"""Operating a served model: the drift reference written at export, drift measured offline (`peftstd monitor`) and
online (/metrics), and one masked JSON log line per request. Servers listen on 127.0.0.1 only; request counts are fixed."""

from __future__ import annotations

import json
import random

import httpx
from conftest import FILLER, Server, peftstd

from peftstd.runtime import drift

EMAILS = ["jane.roe@example.org", "ops+alerts@mail.example.co.uk"]
PHONES = ["+1 415 555 0134", "(020) 7946 0958"]
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004"]
IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]
IDS = ["11010519491231002X"]
ADDRESSES = ["192.168.10.24", "2001:db8::8a2e:370:7334"]
PERSONAL = EMAILS + PHONES + CARDS + IBANS + IDS + ADDRESSES


def held_out_texts(run) -> list[str]:
    from peftstd.runtime.folders import RunFolder
    from peftstd.runtime.taskdata import run_splits

    _, splits = run_splits(run, RunFolder(run).raw_manifest)
    return [row.text for row in splits.test]


def other_domain(n: int) -> list[str]:
    """Long texts of words the tiny model's vocabulary lacks (all [UNK]) around its filler words."""
    rng = random.Random(3)
    return [" ".join(rng.choice(["zyx", "quorp", "blenk", "vrass", *FILLER[:2]]) for _ in range(28)) for _ in range(n)]


def test_export_writes_the_drift_reference_and_monitor_measures_drift(trained, exported, tmp_path):
    from peftstd.runtime.folders import ExportFolder

    export = ExportFolder(exported)
    reference = export.monitor
    texts = held_out_texts(trained["lora"])
    fastest = export.record.choice.timings[0]  # the reference is made on what `serve` runs: the fastest here
    assert reference.examples == len(texts) and (reference.artifact, reference.runtime) == (fastest.artifact, fastest.runtime)
    assert reference.split == "test"
    assert sum(reference.features["label"].counts) == len(texts) == sum(reference.features["length"].counts)
    assert reference.features["label"].categories == ["negative", "positive", drift.OTHER]
    assert "monitor.json" in export.record.files
    assert peftstd("check", str(exported)).returncode == 0  # monitor.json is covered by the export's sha256 list

    # the held-out split itself: the same figures as the reference, so no drift at all
    (tmp_path / "test.txt").write_text("\n".join(texts))
    same = peftstd("monitor", str(exported), "--data", str(tmp_path / "test.txt"), "--out", str(tmp_path / "same.json"), "--fail-on", "moderate")
    assert same.returncode == 0, same.stderr
    figures = json.loads((tmp_path / "same.json").read_text())["figures"]
    assert set(figures) == {"label", "confidence", "length", "truncated", "unknown_tokens"}
    assert all(f["psi"] < 1e-9 and f["js"] < 1e-6 and f["verdict"] == "none" for f in figures.values()), figures

    # another domain, as a table with its own column name: longer texts, unknown words
    (tmp_path / "shifted.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in other_domain(60)))
    shifted = peftstd("monitor", str(exported), "--data", str(tmp_path / "shifted.jsonl"), "--column", "body",
                      "--out", str(tmp_path / "shifted.json"), "--fail-on", "major")
    assert shifted.returncode == 3, shifted.stderr  # --fail-on major: drift found
    figures = json.loads((tmp_path / "shifted.json").read_text())["figures"]
    assert figures["length"]["psi"] > drift.PSI_MAJOR and figures["length"]["verdict"] == "major"
    assert figures["unknown_tokens"]["js"] > drift.JS_DRIFT and figures["unknown_tokens"]["verdict"] == "major"
    assert "major" in shifted.stdout and "unknown_tokens" in shifted.stdout

    (tmp_path / "inputs.xml").write_text("<texts/>")
    for args, message in ((["--data", str(tmp_path / "missing.csv")], "does not exist"),
                          (["--data", str(tmp_path / "shifted.jsonl")], "no text in column 'text'"),
                          (["--data", str(tmp_path / "inputs.xml")], "allowed are .jsonl")):
        bad = peftstd("monitor", str(exported), *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def scrape(server: Server, key: str) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_served_predictions_feed_drift_metrics_and_masked_request_logs(trained, exported, start, tmp_path):
    keys, log = tmp_path / "keys.yaml", tmp_path / "requests.log"
    client = peftstd("serve", "keys", "add", "client", "--scopes", "infer", "--keys", str(keys)).stdout.strip().splitlines()[-1]
    scraper = peftstd("serve", "keys", "add", "scraper", "--scopes", "metrics", "--keys", str(keys)).stdout.strip().splitlines()[-1]
    server = start(f"m={exported}", "--keys", str(keys), "--request-log", str(log), "--log-inputs")
    auth = {"Authorization": f"Bearer {client}"}
    url = f"{server.url}/v1/models/m/predict"

    texts = held_out_texts(trained["lora"])
    sent = 0
    for start_at in range(0, len(texts), 4):
        response = httpx.post(url, json={"inputs": texts[start_at : start_at + 4]}, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        sent += 1
    samples = scrape(server, scraper)
    psi = {s.labels["feature"]: s.value for s in samples["peftstd_drift_psi"]}
    assert set(psi) == {"label", "confidence", "length", "truncated", "unknown_tokens"}
    assert max(psi.values()) < 1e-9, psi  # served predictions of the held-out split are the reference's, batched or not
    assert samples["peftstd_drift_window_size"][0].value == len(texts)

    personal = [f"great film, write to {EMAILS[0]} or {EMAILS[1]}", f"dull, call {PHONES[0]} or {PHONES[1]}",
                f"charming, paid with {CARDS[0]} and {CARDS[1]}", f"boring, refund to {IBANS[0]} / {IBANS[1]}",
                f"superb, my id {IDS[0]}", f"bland, from {ADDRESSES[0]} and {ADDRESSES[1]}", f"fun, token Bearer {client}"]
    response = httpx.post(url, json={"inputs": personal}, headers={**auth, "X-Request-Id": "order-42"}, timeout=60)
    assert response.status_code == 200 and response.headers["x-request-id"] == "order-42"
    shifted = other_domain(300)
    for start_at in range(0, len(shifted), 30):
        assert httpx.post(url, json={"inputs": shifted[start_at : start_at + 30]}, headers=auth, timeout=60).status_code == 200
    bad_name = httpx.post(f"{server.url}/v2/models/m/infer", headers=auth, timeout=10,
                          json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
                                           {"name": EMAILS[0], "datatype": "BYTES", "shape": [1], "data": ["ok"]}]})
    assert bad_name.status_code == 400 and EMAILS[0] in bad_name.text  # the client sees its own input named back
    assert httpx.post(url, json={"inputs": ["great"]}, headers={"Authorization": "Bearer pst_not_a_key_at_all_0000"}).status_code == 401
    samples = scrape(server, scraper)
    window = samples["peftstd_drift_window_size"][0].value
    assert window == len(texts) + len(personal) + len(shifted)  # within the default window of 1000
    figures = {s.labels["feature"]: s.value for s in samples["peftstd_drift_psi"]}
    assert figures["unknown_tokens"] > drift.PSI_MAJOR and figures["length"] > drift.PSI_MAJOR, figures
    server.stop()

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    requests = sent + 1 + len(shifted) // 30 + 1 + 1 + 2  # predictions, personal, shifted, bad V2 name, bad key, two scrapes
    assert len(lines) == requests and len({entry["request_id"] for entry in lines}) == requests
    raw = log.read_text()
    for secret in [*PERSONAL, client, scraper, "pst_not_a_key_at_all_0000"]:
        assert secret not in raw, secret
    [tagged] = [entry for entry in lines if entry["request_id"] == "order-42"]
    assert tagged["key"] == "client" and tagged["status"] == 200 and tagged["model"] == "m"
    assert tagged["route"] == "/v1/models/{name}/predict" and tagged["request_bytes"] > 0 and tagged["response_bytes"] > 0
    assert all({"label", "confidence"} <= set(o) for o in tagged["outputs"]) and len(tagged["outputs"]) == len(personal)
    assert "<email>" in tagged["inputs"][0] and tagged["inputs"][0].startswith("great film, write to ")
    assert tagged["duration_ms"] >= tagged["wait_ms"] > 0 and "tokenize_ms" in tagged
    statuses = [entry["status"] for entry in lines]
    assert statuses.count(401) == 1 and statuses.count(400) == 1
    [refused] = [entry for entry in lines if entry["status"] == 400]
    assert "unknown input" in refused["error"] and refused["key"] == "client"
    assert {entry["key"] for entry in lines if entry["route"] == "/metrics"} == {"scraper"}
