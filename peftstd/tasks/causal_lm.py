"""Causal-LM supervised fine-tuning: prompt/response or chat data through the model's chat template, loss on
the response tokens only, optional packing. Validation: token-weighted loss and perplexity. Test: the same,
plus generation from the held-out prompts scored with corpus BLEU (sacreBLEU) and ROUGE-1/2/L (rouge-score,
F-measure aggregated over the corpus by its bootstrap aggregator, as the summarization literature reports it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from peftstd.data.examples import PromptExample
from peftstd.tasks.base import EncodedSplit, Task

IGNORE = -100


def ensure_pad_token(tokenizer) -> None:
    """Decoder-only tokenizers often have no pad token; padding positions are masked anyway."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def prompt_ids(tokenizer, row: PromptExample) -> list[int]:
    """The prompt as the model sees it before answering: its chat template with the generation prompt, or
    plain text and a newline when the tokenizer has no template."""
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template(row.messages(), add_generation_prompt=True, tokenize=True))
    history = "".join(f"{text}\n" for _, text in row.history)
    return tokenizer(history + row.prompt + "\n", add_special_tokens=True)["input_ids"]


def example_ids(tokenizer, row: PromptExample) -> tuple[list[int], int]:
    """(token ids of prompt + response, number of prompt tokens). With a chat template, the whole
    conversation goes through it (so the response ends with the template's end-of-turn token)."""
    prompt = prompt_ids(tokenizer, row)
    if tokenizer.chat_template:
        full = list(tokenizer.apply_chat_template(row.messages() + [{"role": "assistant", "content": row.response}], tokenize=True))
        if full[: len(prompt)] == prompt:
            return full, len(prompt)
    response = tokenizer(row.response, add_special_tokens=False)["input_ids"]
    return prompt + response + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []), len(prompt)


def pack(features: list[dict], max_length: int) -> list[dict]:
    """Consecutive examples concatenated into sequences of at most `max_length` tokens."""
    packed, current = [], {"input_ids": [], "attention_mask": [], "labels": []}
    for feature in features:
        if current["input_ids"] and len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "attention_mask": [], "labels": []}
        for key in current:
            current[key] = current[key] + feature[key]
    if current["input_ids"]:
        packed.append(current)
    return packed


class CausalLM(Task):
    name = "causal-lm"
    peft_task_type = "CAUSAL_LM"
    head_candidates = ()  # the LM head is tied to the input embeddings; LoRA adapts the blocks
    primary_metric = "loss"
    generative = True
    card_metrics = (("perplexity", "perplexity", "Test perplexity"), ("bleu", "bleu", "Corpus BLEU (sacreBLEU)"),
                    ("rouge1", "rouge", "ROUGE-1 F"), ("rouge2", "rouge", "ROUGE-2 F"), ("rougeL", "rouge", "ROUGE-L F"))

    def label_names(self, configured, splits) -> list[str]:
        self.labels = []
        return []

    def load_model(self, path: Path, labels: list[str], **config_overrides):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, **config_overrides)

    def encode(self, tokenizer, rows: list[PromptExample], labels: list[str], max_length: int, packing: bool = False, **_) -> EncodedSplit:
        """Prompt tokens are labelled IGNORE: the loss covers the response (and its end-of-turn token) only."""
        ensure_pad_token(tokenizer)
        features, truncated = [], 0
        for row in rows:
            ids, prompt_length = example_ids(tokenizer, row)
            truncated += len(ids) > max_length
            ids = ids[:max_length]
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                             "labels": [IGNORE] * min(prompt_length, len(ids)) + ids[prompt_length:]})
        if packing:
            features = pack(features, max_length)
        return EncodedSplit(features, [len(f["input_ids"]) for f in features], truncated=truncated)

    def loss(self, model, batch, label_smoothing: float = 0.0):
        """The model's own (shifted) cross-entropy, or a label-smoothed one over the same shifted positions."""
        if not label_smoothing:
            return model(**batch).loss
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                                 label_smoothing=label_smoothing)

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        ensure_pad_token(tokenizer)
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)

    @torch.no_grad()
    def evaluate_split(self, model, loader, order, accelerator, autocast: bool = True):
        """(metrics, None, None): the mean loss over every response token of the split, and its exp."""
        model.eval()
        total, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for batch in loader:
            with accelerator.autocast() if autocast else torch.autocast(accelerator.device.type, enabled=False):
                loss = model(**batch).loss.double()
            count = (batch["labels"][:, 1:] != IGNORE).sum().double()  # the model shifts labels by one
            total += accelerator.reduce(loss * count, reduction="sum").cpu()
            tokens += accelerator.reduce(count, reduction="sum").cpu()
        model.train()
        mean = float(total / tokens.clamp_min(1))
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}, None, None

    @torch.no_grad()
    def generate(self, model, tokenizer, rows: list[PromptExample], settings, max_length: int, seed: int) -> list[str]:
        """Responses to `rows`' prompts, decoded without special tokens (left-padded batches)."""
        ensure_pad_token(tokenizer)
        model.eval()
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        outputs = []
        try:
            torch.manual_seed(seed)
            for start in range(0, len(rows), settings.batch_size):
                prompts = [prompt_ids(tokenizer, row)[-max_length:] for row in rows[start : start + settings.batch_size]]
                batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
                generated = model.generate(**batch, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                                           do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                                           pad_token_id=tokenizer.pad_token_id)
                outputs += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        finally:
            tokenizer.padding_side = side
        model.train()
        return [text.strip() for text in outputs]

    @staticmethod
    def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
        """Corpus BLEU (sacreBLEU, 0-100) and ROUGE-1/2/L F-measures (0-1, rouge-score's aggregate)."""
        import sacrebleu
        from rouge_score import rouge_scorer, scoring

        bleu = sacrebleu.corpus_bleu(predictions, [references]).score
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        aggregator = scoring.BootstrapAggregator(n_samples=1000)
        np.random.seed(0)  # the aggregator resamples with numpy's global RNG
        for prediction, reference in zip(predictions, references):
            aggregator.add_scores(scorer.score(reference, prediction))
        rouge = aggregator.aggregate()
        return {"bleu": float(bleu), **{key: float(rouge[key].mid.fmeasure) for key in ("rouge1", "rouge2", "rougeL")}}

    def prediction_records(self, rows, logits, label_ids, labels) -> list[dict]:
        generated = getattr(self, "generated", {})
        return [{"origin": row.origin, "prompt": row.prompt, "reference": row.response,
                 **{f"generated_{who}": texts[i] for who, texts in generated.items() if i < len(texts)}}
                for i, row in enumerate(rows)]

    def report(self, logits, label_ids, labels, rows=None) -> str:
        """Markdown: generation metrics of the base and the fine-tuned model, then sample generations."""
        scores, generated = getattr(self, "scores", {}), getattr(self, "generated", {})
        lines = ["### Generation on held-out test prompts", "",
                 "| model | prompts | BLEU | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|---|"]
        for who, metrics in scores.items():
            lines.append(f"| {who} | {metrics['prompts']} | {metrics['bleu']:.2f} | {metrics['rouge1']:.4f} | "
                         f"{metrics['rouge2']:.4f} | {metrics['rougeL']:.4f} |")
        if rows and generated:
            lines += ["", "### Sample generations (test)", "", "| prompt | reference | " + " | ".join(generated) + " |",
                      "|---|---|" + "---|" * len(generated)]
            for i, row in enumerate(rows[:12]):
                cells = [row.prompt, row.response] + [texts[i] if i < len(texts) else "" for texts in generated.values()]
                lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")[:160] for c in cells) + " |")
        return "\n".join(lines) + "\n"
