"""Decoder engines for iteration-level batching: one causal-LM forward over a batch of sequences, each with its own
KV cache, behind one call for the ONNX decoder of an export and for a PyTorch model with LoRA adapters.

The cache of a batch is a list of (key, value) tensors per layer, [rows, kv heads, positions, head dim], with every
row's real positions at the right and padding (masked out by `attention_mask`) at the left; `position_ids` count
each row's own tokens, so a row's logits do not depend on how far it is padded. `KVBatch` joins rows (a new
sequence after its prefill) and drops them (a finished one) between steps, the way TGI's `CausalLMBatch`
concatenates and filters its batches.

Both engines take and give torch tensors on the CPU; ONNX Runtime reads them as numpy arrays without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftstd.errors import UserError

Past = list[tuple[torch.Tensor, torch.Tensor]]


def end_ids(tokenizer, folder: Path) -> frozenset[int]:
    """The tokens that end a turn: the generation config's eos ids and the tokenizer's eos."""
    from transformers import GenerationConfig

    ids = set()
    try:
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


@dataclass
class KVBatch:
    """The running batch's cache and mask; rows in the order of the scheduler's sequences."""

    past: Past = field(default_factory=list)
    mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def join(self, past: Past, mask: torch.Tensor) -> None:
        """Append prefilled sequences (their cache and mask, rows left-padded to one width), left-padding the shorter side."""
        if not self.rows:
            self.past, self.mask = past, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.past = [(torch.cat([pad_left(k, width), pad_left(nk, width)]), torch.cat([pad_left(v, width), pad_left(nv, width)]))
                     for (k, v), (nk, nv) in zip(self.past, past)]
        self.mask = torch.cat([pad_left(self.mask, width), pad_left(mask, width)])

    def keep(self, rows: list[int]) -> None:
        """Only these rows stay; positions that are padding in every remaining row are cut off."""
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        used = mask.any(0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        self.mask = mask[:, start:]
        self.past = [(k.index_select(0, index)[:, :, start:].contiguous(), v.index_select(0, index)[:, :, start:].contiguous())
                     for k, v in self.past]

    def grow(self, present: Past) -> None:
        """After a decode step: the engine's new cache, one position longer for every row."""
        self.past = present
        self.mask = torch.cat([self.mask, torch.ones(self.rows, 1, dtype=torch.long)], dim=1)


def pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` padded with zeros on the left of its position axis (the last for a mask, the third for a cache)."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[axis]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


class Decoder:
    """`forward(ids, mask, positions, past, adapters)` -> (the last position's logits per row [rows, vocab], the
    grown cache). `adapters` names each row's adapter (None or '__base__' for the base), for engines that have them."""

    description: str
    adapters: dict[str, Path]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, past: Past | None,
                adapters: list[str] | None = None) -> tuple[torch.Tensor, Past]:
        raise NotImplementedError

    def prefill(self, prompts: list[list[int]], adapters: list[str | None] | None = None) -> tuple[torch.Tensor, Past, torch.Tensor]:
        """Prompts in one forward, left-padded to the longest: each one's next-token logits [rows, vocab], the cache
        and its mask. A prompt's positions count its own tokens, so padding changes its logits only by float rounding."""
        width = max(len(p) for p in prompts)
        input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits, past = self.forward(input_ids, mask, positions, None, adapters if adapters and any(adapters) else None)
        return logits, past, mask


class OnnxDecoder(Decoder):
    """The export's decoder with past key/values (optimum's `model.onnx`, as the export gate judged it), run on ONNX
    Runtime directly: optimum's ORTModelForCausalLM wraps the same session for `generate`, one batch at a time."""

    def __init__(self, folder: Path, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        from peftstd.runtime.inference import onnx_session

        self.session = onnx_session(folder / "model.onnx", threads, [], spinning)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if not self.past_names:
            raise UserError(f"{str(folder)!r} has no KV cache (exported with kv_cache: false); re-export with the cache to serve it")
        key = inputs[self.past_names[0]]
        self.heads, self.head_dim = key.shape[1], key.shape[3]
        self.present_names = [o.name for o in self.session.get_outputs()][1:]
        self.has_positions = "position_ids" in inputs
        self.options = ort.RunOptions()
        self.adapters = {}
        self.description = f"onnxruntime {self.session.get_providers()[0]} (decoder with KV cache, iteration-level batching)"

    def forward(self, input_ids, attention_mask, position_ids, past, adapters=None):
        if adapters and any(a not in (None, "__base__") for a in adapters):
            raise UserError("a merged ONNX export has no adapters to switch between")
        rows = input_ids.shape[0]
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if self.has_positions:
            feed["position_ids"] = position_ids.numpy()
        if past is None:
            empty = torch.zeros(rows, self.heads, 0, self.head_dim).numpy()
            feed.update(dict.fromkeys(self.past_names, empty))
        else:
            for i, (k, v) in enumerate(past):
                feed[self.past_names[2 * i]], feed[self.past_names[2 * i + 1]] = k.numpy(), v.numpy()
        logits, *present = self.session.run(None, feed, self.options)
        tensors = [torch.from_numpy(p) for p in present]
        return torch.from_numpy(logits[:, -1]), list(zip(tensors[0::2], tensors[1::2]))


class TorchDecoder(Decoder):
    """A transformers causal LM in PyTorch, with any number of LoRA adapters of the same base loaded side by side
    into one peft model: a batch mixes adapters row by row through peft's `adapter_names` (mixed-batch inference),
    so eight fine-tunes cost one base in memory plus eight small adapters."""

    def __init__(self, base: Path, adapters: dict[str, Path], threads: int | None = None):
        import transformers

        if threads:
            torch.set_num_threads(threads)
        model = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        self.base, self.adapters = base, {}
        self.model = model.eval()
        for name, folder in adapters.items():
            self.load_adapter(name, folder)
        self.description = f"pytorch {torch.__version__} CPU fp32, {torch.get_num_threads()} threads (peft mixed-adapter batches)"

    def load_adapter(self, name: str, folder: Path) -> None:
        """Add an adapter (a peft LoRA folder) under `name`; the scheduler calls this between decode steps."""
        from peft import PeftModel

        if name in self.adapters:
            raise UserError(f"an adapter named {name!r} is loaded already")
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name).eval()
        else:
            self.model.load_adapter(folder, adapter_name=name)
            self.model.eval()
        self.adapters[name] = folder

    def unload_adapter(self, name: str) -> None:
        self.model.delete_adapter(name) if len(self.adapters) > 1 else setattr(self, "model", self.model.unload())
        del self.adapters[name]

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask, position_ids, past, adapters=None):
        from transformers import DynamicCache

        cache = DynamicCache.from_legacy_cache(tuple(past)) if past is not None else DynamicCache()
        extra = {"adapter_names": [a or "__base__" for a in adapters]} if adapters and self.adapters else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                         use_cache=True, logits_to_keep=1, **extra)
        return out.logits[:, -1].float(), [tuple(layer) for layer in out.past_key_values.to_legacy_cache()]
