"""GGUF checkpoints (llama.cpp's format) converted once into a cached Hugging Face folder.

transformers dequantizes GGUF tensors on load (`gguf_file=`, needs the gguf package). Doing that for every
run costs ~20 s and a different code path; the converted fp32 folder is cached under the peftstd cache,
keyed by the GGUF file's sha256, and `peftstd_conversion.json` in it records the source for manifests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CONVERSION_FILE = "peftstd_conversion.json"


def convert_gguf(folder: Path, filename: str, name: str) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftstd.basics.hashing import sha256_file
    from peftstd.data.cache import cache_dir

    digest = sha256_file(folder / filename)
    target = cache_dir() / "models" / f"{name}-{digest[:12]}"
    if (target / CONVERSION_FILE).is_file() and not (target / "tokenizer.model").is_file():  # see save_pretrained below
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype="float32")
    model.save_pretrained(staging, safe_serialization=True)
    # The fast tokenizer only: with sentencepiece installed, the slow one transformers also builds from a GGUF file
    # names the GGUF file itself as its vocabulary, and save_pretrained copied that (98 MB) in as tokenizer.model,
    # which llama.cpp's converter and sentencepiece then failed to parse (on a fresh cache only).
    tokenizer.save_pretrained(staging, legacy_format=False)
    record = {"source": str(folder / filename), "source_sha256": digest, "format": "gguf", "dequantized_to": "float32",
              "converter": f"transformers {transformers.__version__} (gguf_file=)"}
    (staging / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # the folder appears complete or not at all
    return target


def conversion_record(path: Path) -> dict | None:
    record = Path(path) / CONVERSION_FILE
    return json.loads(record.read_text()) if record.is_file() else None
