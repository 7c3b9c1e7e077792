"""`peftstd check PATH`: verify a run directory from its own files, in seconds.

Every required file present; every sha256 recorded in the manifest matches; the config validates
against the schema version it records; the trained weights load with the stock libraries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftstd.basics.hashing import sha256_file
from peftstd.methods import METHODS

RUN_FILES = ("config.yaml", "manifest.json", "metrics.json", "labels.json", "report.md", "predictions/test.jsonl")


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str = ""


EXPORT_FILES = ("export.json", "config.json", "labels.json")  # the artifacts themselves: see the gate records
PRETRAIN_FILES = ("config.yaml", "manifest.json", "metrics.json", "report.md", "README.md")
PRETRAINING_CLASSES = {"masked-lm": "AutoModelForMaskedLM", "causal-lm": "AutoModelForCausalLM"}  # by objective


def check_path(path: Path) -> list[Finding]:
    if (path / "manifest.json").is_file():
        return check_run(path)
    if (path / "export.json").is_file():
        return check_export(path)
    return [Finding("kind", False, f"{path} is neither a finished run (manifest.json) nor an export (export.json)")]


def check_export(folder: Path) -> list[Finding]:
    findings = [Finding(f"file {name}", (folder / name).is_file(), "" if (folder / name).is_file() else "missing") for name in EXPORT_FILES]
    report = json.loads((folder / "export.json").read_text())
    findings.extend(check_hashes(folder, report.get("files", {})))
    gate = report.get("gate", {}).get("artifacts", [])
    if report.get("runtime", {}).get("engine") == "llama.cpp":  # GGUF: judged by perplexity and tokenization in llama.cpp
        complete = bool(gate) and all("tokenizer" in r and "value" in r for r in gate)
        findings.append(Finding("gate figures recorded", complete, f"{len(gate)} GGUF file(s) scored in llama.cpp" if complete else "missing"))
    else:
        fp32 = next((r for r in gate if r.get("artifact") == "fp32"), {})
        findings.append(Finding("parity figures recorded", "max_abs_logit_difference" in fp32,
                                f"max |Δlogit| {fp32['max_abs_logit_difference']:.1e}" if "max_abs_logit_difference" in fp32 else "missing"))
    gate = [r for r in gate if r.get("shipped", True)]  # artifacts that failed while another of their kind passed are gone
    failed = [r["artifact"] for r in gate if not r.get("passed")]
    findings.append(Finding("export gate passed", report.get("status") == "passed" and bool(gate) and not failed,
                            f"failed: {', '.join(failed)}" if failed else f"{len(gate)} artifact(s) within budget"))
    for record in gate:  # an artifact is a file, or (causal-LM, seq2seq) a folder of ONNX files
        path = folder / record["file"]
        if path.suffix == ".gguf":
            findings.append(attempt(f"{record['file']} loads in llama.cpp", lambda f=path: load_gguf(f)))
            continue
        if path.suffix == ".xml":  # OpenVINO IR (NNCF's int8)
            findings.append(attempt(f"{record['file']} compiles in a bare OpenVINO core", lambda f=path: load_openvino(f)))
            continue
        for onnx_file in sorted(path.glob("*.onnx")) if path.is_dir() else [path]:
            name = onnx_file.relative_to(folder).as_posix()
            findings.append(attempt(f"{name} loads in a bare onnxruntime session", lambda f=onnx_file: load_onnx(f)))
    return findings


def load_onnx(path: Path) -> str:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ", ".join(i.name for i in session.get_inputs())


def load_openvino(path: Path) -> str:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    return ", ".join(port.any_name for port in compiled.inputs)


def load_gguf(path: Path) -> str:
    import logging

    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    model = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    description = f"{model.metadata.get('general.architecture', '?')}, {model.n_vocab()} tokens"
    model.close()
    return description


def check_run(run: Path) -> list[Finding]:
    manifest = json.loads((run / "manifest.json").read_text())
    pretraining = manifest.get("pretraining")
    findings = [Finding(f"file {name}", (run / name).is_file(), "missing" if not (run / name).is_file() else "")
                for name in (PRETRAIN_FILES if pretraining else RUN_FILES)]
    weights_dir = pretraining["model_dir"] if pretraining else manifest.get("method", {}).get("weights_dir", "adapter")
    findings.append(Finding(f"folder {weights_dir}/", (run / weights_dir).is_dir(), "" if (run / weights_dir).is_dir() else "missing"))
    findings.extend(check_hashes(run, manifest.get("files", {})))
    findings.append(attempt("config validates against its schema", lambda: check_config(run, manifest)))
    findings.append(attempt(f"{weights_dir}/ loads with stock libraries", lambda: load_stock(run, manifest)))
    return findings


def check_hashes(root: Path, recorded: dict[str, str]) -> list[Finding]:
    if not recorded:
        return [Finding("sha256 of files", False, "the manifest records no file hashes")]
    bad = []
    for name, expected in recorded.items():
        file = root / name
        if not file.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(file) != expected:
            bad.append(f"{name} (changed)")
    return [Finding(f"sha256 of {len(recorded)} recorded files", not bad, ", ".join(bad))]


def check_config(run: Path, manifest: dict) -> str:
    from peftstd.config import load_config
    from peftstd.config.pretrain import PretrainConfig
    from peftstd.config.schema import RecipeConfig

    cfg = load_config(run / "config.yaml", schema=PretrainConfig if manifest.get("pretraining") else RecipeConfig)
    if cfg.schema_version != manifest["schema_version"]:
        raise ValueError(f"config says schema {cfg.schema_version}, manifest {manifest['schema_version']}")
    return f"schema {cfg.schema_version}"


def load_stock(run: Path, manifest: dict) -> str:
    """Load the weights the way a user without peftstd would (peft / transformers / adapters), with the
    transformers class of the run's task."""
    import transformers
    from transformers.utils import logging

    from peftstd.tasks import get_task

    logging.set_verbosity_error()  # the base model's fresh head is expected; the adapter replaces it
    if manifest.get("pretraining"):
        getattr(transformers, PRETRAINING_CLASSES[manifest["task"]["type"]]).from_pretrained(run / manifest["pretraining"]["model_dir"])
        return "transformers"
    labels = json.loads((run / "labels.json").read_text())
    task = get_task(manifest["task"]["type"], labels)
    auto = getattr(transformers, task.auto_model)
    library = manifest["method"].get("library") or METHODS[manifest["method"]["name"]].library
    if library not in ("peft", "adapters"):  # the method saved the whole model (full fine-tuning, and the like)
        auto.from_pretrained(run / manifest["method"].get("weights_dir", "model"))
        return "transformers"
    quantization = manifest["base_model"].get("quantization")
    if quantization:  # the base as it trained: transformers' own BitsAndBytesConfig, nothing of peftstd's
        import torch

        settings = ({"load_in_8bit": True} if quantization["bits"] == 8 else
                    {"load_in_4bit": True, "bnb_4bit_quant_type": quantization["type"], "bnb_4bit_use_double_quant": quantization["double_quant"],
                     "bnb_4bit_compute_dtype": {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[quantization["compute_dtype"]]})
        base = auto.from_pretrained(manifest["base_model"]["path"], **task.head_config(labels), device_map="cpu",
                                    quantization_config=transformers.BitsAndBytesConfig(**settings, llm_int8_skip_modules=list(task.head_candidates) or None))
    else:
        base = auto.from_pretrained(manifest["base_model"]["path"], **task.head_config(labels))
    if library == "adapters":
        import adapters

        adapters.init(base)
        base.load_adapter(str(run / "adapter"), set_active=True, with_head=False)
        return "adapters"
    from peft import PeftModel

    PeftModel.from_pretrained(base, run / "adapter")
    return f"peft on a {quantization['bits']}-bit bitsandbytes base" if quantization else "peft"


def attempt(check: str, action: Callable[[], str]) -> Finding:
    try:
        return Finding(check, True, action())
    except Exception as error:  # noqa: BLE001 - any failure to load or validate is a finding, not a crash
        return Finding(check, False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
