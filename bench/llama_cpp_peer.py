"""The llama.cpp peer of bench/llm_serve.py: a run's merged model as GGUF files (f32, and the quantized types given)
that llama.cpp's `llama-server` serves, made with llama.cpp's own tools.

    python bench/llama_cpp_peer.py RUN --llama-cpp DIR --out DIR [--types Q8_0]

DIR (`--llama-cpp`) is the llama.cpp source that the llama-cpp-python sdist vendors (`vendor/llama.cpp`), built with
`cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON && cmake --build build --target llama-server llama-quantize`; the
converter imports `sentencepiece`, which this project does not pin (`pip install --target DIR sentencepiece` and
PYTHONPATH=DIR keep it out of the venv).
The run's adapter is merged into its base with peft and saved; `convert_hf_to_gguf.py` writes the tensors. Its
vocabulary writer takes the tokenizer that transformers rebuilds from a GGUF base (SmolLM2's) for a SentencePiece
one and writes a vocabulary llama-server cannot tokenize with ('unordered_map::at' on every request), so when the
base came from a GGUF file, that file's own tokenizer fields (gpt2 BPE, pre-tokenizer `smollm`, chat template)
replace the converter's. Then `llama-quantize` makes each type from the f32 file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def merged_folder(run: Path, out: Path) -> Path:
    from peftstd.runtime.load import load_run

    loaded = load_run(run)
    folder = out / "merged"
    loaded.model.merge_and_unload().save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def with_tokenizer_of(converted: Path, source: Path, out: Path) -> None:
    """`converted`'s tensors and model fields with `source`'s tokenizer fields, written to `out`."""
    import gguf

    tensors, vocabulary = gguf.GGUFReader(converted), gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, arch=tensors.fields["general.architecture"].contents())
    fields = {k: v for k, v in tensors.fields.items() if not k.startswith(("GGUF.", "tokenizer.", "general.architecture"))}
    fields.update({k: v for k, v in vocabulary.fields.items() if k.startswith("tokenizer.")})
    for key, field in fields.items():
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, kind)
    for tensor in tensors.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--types", nargs="*", default=["Q8_0"])
    args = parser.parse_args()
    from peftstd.runtime.folders import RunFolder

    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.llama_cpp / "gguf-py"), os.environ.get("PYTHONPATH")]))}
    sys.path.insert(0, str(args.llama_cpp / "gguf-py"))
    folder = merged_folder(args.run, args.out)
    converted = args.out / "converted-f32.gguf"
    subprocess.run([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f32", "--outfile",
                    str(converted)], env=env, check=True, capture_output=True)
    f32 = args.out / "model-f32.gguf"
    conversion = (RunFolder(args.run).raw_manifest["base_model"].get("conversion") or {})
    source = conversion.get("source_file") or conversion.get("source")
    if source and str(source).endswith(".gguf") and Path(source).is_file():
        with_tokenizer_of(converted, Path(source), f32)
        converted.unlink()
    else:
        converted.rename(f32)
    for kind in args.types:
        subprocess.run([str(args.llama_cpp / "build" / "bin" / "llama-quantize"), str(f32), str(args.out / f"model-{kind.lower()}.gguf"),
                        kind], check=True, capture_output=True)
    print("\n".join(str(p) for p in sorted(args.out.glob("*.gguf"))))


if __name__ == "__main__":
    main()
