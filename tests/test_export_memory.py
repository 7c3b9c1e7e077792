"""Static-int8 calibration of long inputs stays within bounded memory: it streams one calibration batch at a time
instead of keeping every intermediate tensor of every example (which took a 256-token MiniLM export to 21.5 GB)."""

from __future__ import annotations

import json
import random

import pytest
from conftest import FILLER, NEGATIVE, POSITIVE, peftstd, run_recipe, write_jsonl


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A 2-layer random BERT with room for 256 tokens, trained briefly on 1,200 long rows."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("long-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(POSITIVE + NEGATIVE + FILLER))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                         max_position_embeddings=256)).save_pretrained(folder)
    rng = random.Random(0)
    rows = []
    for i in range(1200):
        label = "positive" if i % 2 == 0 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(150, 300))] + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rows.append({"text": " ".join(words), "label": label})
    out = tmp_path_factory.mktemp("long")
    data = write_jsonl(out / "long.jsonl", rows)
    result = run_recipe([f"model.name={folder}", f"data.source={data}", f"output.dir={out}", "output.name=run", "model.max_length=256",
                         "training.batch_size=16", "evaluation.batch_size=32", "training.precision=fp32", "training.max_steps=4",
                         "evaluation.every_steps=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "run"


def test_static_int8_calibration_streams_long_inputs(long_run, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("int8: true\ncpu_int8: [static]\ncalibration_samples: 768\nsearch_train_samples: 0\nspeed_check: false\nbudget: 100\n")
    result = peftstd("export", str(long_run), "--profile", str(profile), "--out", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    quantize = report["stages"]["quantize"]
    assert quantize["calibration_examples"] == 768 and quantize["calibration_batches"] == 96
    grown = report["peak_rss_mb"]["quantize"] - report["peak_rss_mb"]["onnx"]
    print(f"peak memory: {report['peak_rss_mb']}, growth in quantize {grown:.0f} MB")
    assert grown < 700, report["peak_rss_mb"]  # keeping every feed's tensors: several GB here
