"""Shared fixtures: a tiny random BERT and a small synthetic sentiment dataset, both written by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from peftstd.basics.ports import free_port

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "finetune.py"

POSITIVE = ["great", "wonderful", "fun", "moving", "brilliant", "charming", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "bland", "tedious", "clumsy", "painful"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "and", "a", "story", "really", "very", "quite"]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose sentiment word decides the label; lengths vary from 3 to 20 tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 19))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with a word-level vocabulary covering the synthetic data."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}assistant {% endif %}")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer, 32-wide random Llama with the tiny word-level vocabulary, [SEP] as end of turn and a chat template."""
    import torch
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "user", "assistant", "system", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), eos_token="[SEP]", pad_token="[PAD]", bos_token="[CLS]")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A 2+2-layer, 32-wide random T5 with a word-level tokenizer that, like T5's, appends </s> and nothing else."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("tiny-t5")
    vocab = ["<pad>", "</s>", "<unk>", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sentiment_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "sentiment.jsonl", synthetic_rows(240))


def tiny_overrides(model: Path, data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"model.name={model}", f"data.source={data}", f"output.dir={out}", f"output.name={name}",
        "model.max_length=32", "training.batch_size=16", "evaluation.batch_size=16",
        "training.precision=fp32", "evaluation.every_steps=4", "training.max_steps=8", *extra,
    ]


RECIPE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def recipe_command(args: list[str], launcher: list[str] | None = None) -> list[str]:
    return (launcher or [sys.executable]) + [str(RECIPE), *args]


def run_recipe(args: list[str], launcher: list[str] | None = None, timeout: int = 300, cwd: Path | None = None):
    """Run the fine-tune recipe in a fresh process, as a user would."""
    return subprocess.run(recipe_command(args, launcher), capture_output=True, text=True, timeout=timeout, env=RECIPE_ENV, cwd=cwd or REPO)


def kill_after_checkpoints(command: list[str], run_dir: Path, count: int = 2) -> None:
    """Start a recipe, SIGKILL it (and its launcher's workers) once `count` complete checkpoints exist, and check it
    had not finished."""
    process = subprocess.Popen(command, env=RECIPE_ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((run_dir / "checkpoints").glob("step-*/checksums.json"))) < count and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # a launcher (accelerate, torchrun) puts its workers in process groups of their own: SIGKILL the tree, workers first
    import psutil

    for member in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    assert not (run_dir / "manifest.json").exists(), "the run finished before it could be killed"


def peftstd(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """The `peftstd` command in a fresh process; one that runs past `timeout` fails its test instead of hanging the
    suite (a `peftstd serve` that should have refused to start once did)."""
    return subprocess.run([sys.executable, "-m", "peftstd", *args], capture_output=True, text=True, cwd=REPO, env=RECIPE_ENV, timeout=timeout)


def evaluated(run: Path, export: Path, out: Path, *extra: str) -> dict:
    """`peftstd eval RUN --compare EXPORT`'s eval.json, after checking that every point lies in its interval."""
    result = peftstd("eval", str(run), "--compare", str(export), "--resamples", "50", "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval.json").read_text())
    for r in report["results"]:
        for name, (low, high) in r["ci95"].items():
            assert low - 1e-9 <= r["metrics"][name] <= high + 1e-9, (name, r)
    return report


def assert_generative_eval(run, export, out):
    """`peftstd eval` of a generative run reproduces its test perplexity and BLEU; its fp32 export scores the same,
    its int8 one is evaluated through `--artifact`."""
    report = evaluated(run, export, out)
    scored, artifact = report["results"]
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert scored["headline"] == ["perplexity", "bleu", "rougeL"]
    assert abs(scored["metrics"]["perplexity"] / trained["perplexity"] - 1) < 1e-4 and abs(scored["metrics"]["bleu"] - trained["bleu"]) < 1e-6
    assert abs(artifact["metrics"]["perplexity"] / scored["metrics"]["perplexity"] - 1) < 1e-3
    assert artifact["metrics"]["bleu"] == scored["metrics"]["bleu"] and report["comparison"]["bleu"]["p_value"] == 1.0
    int8 = peftstd("eval", str(export), "--artifact", "int8", "--resamples", "20", "--out", str(out / "int8"))
    assert int8.returncode == 0 and "perplexity" in int8.stdout and "int8" in int8.stdout, int8.stderr[-2000:]


@pytest.fixture(scope="session")
def trained(tiny_model, sentiment_file, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("export-runs")
    runs = {}
    for method in ("lora", "adapter"):
        result = run_recipe(tiny_overrides(tiny_model, sentiment_file, out, method, f"method={method}", "training.max_steps=12"))
        assert result.returncode == 0, result.stderr[-2000:]
        runs[method] = out / method
    return runs


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "lora"
    result = peftstd("export", str(trained["lora"]), "--int8", "--cpu-int8", "dynamic", "static", "nncf", "--budget", "100", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


class Server:
    """A `peftstd serve` process; stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, *args: str, wait: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "peftstd", "serve", *args, "--port", str(self.port)],
                                        cwd=REPO, env=RECIPE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.process.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready in time")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start():
    servers = []

    def make(*args: str, **kwargs) -> Server:
        servers.append(Server(*args, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()
