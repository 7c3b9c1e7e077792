"""Stock `tritonclient.http` against `peftstd serve`, in a throwaway virtual environment.

    python bench/tritonclient_check.py runs/latest/export --venv /tmp/tritonclient-venv --out bench/results

tritonclient pins protobuf and ml-dtypes below the versions peftstd's stack needs, so it cannot be a dependency:
this script makes a separate venv (`pip install tritonclient[http]`), starts `peftstd serve` on 127.0.0.1 from the
project's environment, and runs an unmodified tritonclient program in the other: liveness, readiness, model
metadata, then inference with BYTES text in JSON and in the binary tensor format and with INT64 token ids,
compared with the server's own /v1 answers. Writes tritonclient_check.md with the command and the output.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CLIENT = r'''
import json, sys
import numpy as np
import tritonclient.http as httpclient
from importlib.metadata import version

url, texts, ids, mask = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
client = httpclient.InferenceServerClient(url=url)
out = {"tritonclient": version("tritonclient"), "live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("m"), "metadata": client.get_model_metadata("m")}
for binary in (False, True):
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    result = client.infer("m", [text], outputs=outputs)
    out[f"text_binary_{binary}"] = {"label": [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("label")],
                                    "probabilities": result.as_numpy("probabilities").tolist()}
inputs = []
for name, values in (("input_ids", ids), ("attention_mask", mask)):
    tensor = httpclient.InferInput(name, list(np.array(values).shape), "INT64")
    tensor.set_data_from_numpy(np.array(values, dtype=np.int64), binary_data=True)
    inputs.append(tensor)
result = client.infer("m", inputs, outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
out["token_ids_logits"] = result.as_numpy("logits").tolist()
print(json.dumps(out))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export")
    parser.add_argument("--venv", default="/tmp/tritonclient-venv")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    import httpx
    import numpy as np
    from transformers import AutoTokenizer

    from peftstd.basics.ports import free_port

    venv = Path(args.venv)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "tritonclient[http]"], check=True)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "peftstd", "serve", f"m={args.export}", "--port", str(port), "--artifact", "fp32"],
                              cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        texts = ["a gorgeous, moving film", "tedious and flat", "not bad at all"]
        reference = httpx.post(f"http://127.0.0.1:{port}/v1/models/m/predict", json={"inputs": texts}, timeout=60).json()["outputs"]
        encoded = AutoTokenizer.from_pretrained(args.export)(texts, padding=True)
        done = subprocess.run([str(venv / "bin" / "python"), "-c", CLIENT, f"127.0.0.1:{port}", json.dumps(texts),
                               json.dumps(encoded["input_ids"]), json.dumps(encoded["attention_mask"])],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    result = json.loads(done.stdout)
    labels = [r["label"] for r in reference]
    expected = np.array([list(r["probabilities"].values()) for r in reference])
    logits = np.array(result["token_ids_logits"])
    from_ids = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    checks = {
        "server live, ready, model ready": result["live"] and result["ready"] and result["model_ready"],
        "metadata lists the text and token inputs": {"text", "input_ids"} <= {i["name"] for i in result["metadata"]["inputs"]},
        "BYTES text, JSON: labels equal /v1": result["text_binary_False"]["label"] == labels,
        "BYTES text, binary: labels equal /v1": result["text_binary_True"]["label"] == labels,
        "binary probabilities within 1e-5 of /v1": float(np.abs(np.array(result["text_binary_True"]["probabilities"]) - expected).max()) < 1e-5,
        "INT64 token ids: softmax(logits) within 1e-4 of /v1": float(np.abs(from_ids - expected).max()) < 1e-4,
    }
    lines = ["# Stock tritonclient against peftstd serve", "", f"`{shlex.join(['python', *sys.argv])}`", "",
             f"tritonclient {result['tritonclient']} (`pip install tritonclient[http]` in {venv}, a throwaway venv: it pins "
             "protobuf and ml-dtypes below peftstd's versions); server: `peftstd serve` on 127.0.0.1, fp32 artifact of "
             f"`{args.export}`; {time.strftime('%Y-%m-%d', time.gmtime())}.", "", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in checks.items()]
    lines += ["", "Labels from /v1 and from tritonclient: " + ", ".join(labels), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tritonclient_check.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
