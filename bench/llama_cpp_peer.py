"""The llama.cpp peer of bench/llm_serve.py: a run's merged model as GGUF files (f32, and the quantized types given)
that llama.cpp's `llama-server` serves, made with llama.cpp's own tools.

    python bench/llama_cpp_peer.py RUN --llama-cpp DIR --out DIR [--types Q8_0]

DIR (`--llama-cpp`) is the llama.cpp source that the llama-cpp-python sdist vendors (`vendor/llama.cpp`), built with
`cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON && cmake --build build --target llama-server llama-quantize`; the
converter imports `sentencepiece` (pinned with the gguf extra).
The run's adapter is merged into its base with peft and saved; `convert_hf_to_gguf.py` writes the tensors, and when
the base came from a GGUF file, that file's own tokenizer fields replace the converter's (`with_tokenizer_of` in
peftstd/export/gguf_export.py says why). Then `llama-quantize` makes each type from the f32 file.
`peftstd export RUN --format gguf` does the same through llama-cpp-python and gates the files; this script
keeps the llama-server binary the serving benchmark needs.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--llama-cpp", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--types", nargs="*", default=["Q8_0"])
    args = parser.parse_args()
    from peftstd.export.gguf_export import with_tokenizer_of
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
