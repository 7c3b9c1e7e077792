"""What causal-LM and sequence-to-sequence fine-tuning share: no label space, token-weighted validation loss
and perplexity (no vocabulary-sized logits are collected), and generation from the held-out prompts scored
with corpus BLEU (sacreBLEU) and ROUGE-1/2/L (rouge-score, F-measure aggregated over the corpus by its
bootstrap aggregator, as the summarization literature reports it), next to the base model's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from peftstd.data.examples import PromptExample
from peftstd.tasks.base import IGNORE, Task


@dataclass
class Generations:
    """The test outputs of a generative run: each model's responses to the held-out prompts (keyed by who
    generated them, e.g. "base model", "fine-tuned") and their BLEU/ROUGE scores."""

    texts: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


class GenerativeTask(Task):
    primary_metric = "loss"
    generative = True
    label_shift = 0  # positions between a label and the logits that predict it (causal LMs shift by one)
    padding_side = "right"  # of prompts batched for generation
    card_metrics = (("perplexity", "perplexity", "Test perplexity"), ("bleu", "bleu", "Corpus BLEU (sacreBLEU)"),
                    ("rouge1", "rouge", "ROUGE-1 F"), ("rouge2", "rouge", "ROUGE-2 F"), ("rougeL", "rouge", "ROUGE-L F"))

    def label_names(self, configured, splits) -> list[str]:
        self.labels = []
        return []

    @torch.no_grad()
    def evaluate_split(self, model, loader, order, accelerator, autocast: bool = True):
        """(metrics, None, None): the mean loss over every target token of the split, and its exp. Summed per example
        and gathered with `gather_for_metrics`, which drops the examples a multi-process loader repeats to even out
        its last batches (a sum reduced across ranks would count them twice)."""
        model.eval()
        total, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for batch in loader:
            labels = batch["labels"][:, self.label_shift :]
            # a causal LM is not given its labels (it would compute a loss of its own); seq2seq builds decoder inputs from them
            inputs = {k: v for k, v in batch.items() if k != "labels"} if self.label_shift else batch
            with accelerator.autocast() if autocast else torch.autocast(accelerator.device.type, enabled=False):
                logits = model(**inputs).logits
            logits = logits[:, : logits.shape[1] - self.label_shift].float()
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
            sums, counts = accelerator.gather_for_metrics((per_token.double().sum(1), (labels != IGNORE).sum(1).double()))
            total += sums.sum().cpu()
            tokens += counts.sum().cpu()
        model.train()
        mean = float(total / tokens.clamp_min(1))
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}, None, None

    def prompt_ids(self, tokenizer, row: PromptExample) -> list[int]:
        """The token ids the model conditions on when it answers `row`."""
        raise NotImplementedError

    def prompt_batches(self, tokenizer, rows: list[PromptExample], batch_size: int, max_length: int):
        """Padded batches of `rows`' prompts, as generation needs them (left-padded for decoder-only models)."""
        side, tokenizer.padding_side = tokenizer.padding_side, self.padding_side
        try:
            for start in range(0, len(rows), batch_size):
                prompts = [self.prompt_ids(tokenizer, row)[-max_length:] for row in rows[start : start + batch_size]]
                yield tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
        finally:
            tokenizer.padding_side = side

    @staticmethod
    def new_tokens(model, generated: torch.Tensor, batch) -> torch.Tensor:
        """The generated tokens alone: a decoder-only model returns the prompt in front of them, an
        encoder-decoder model its decoder start token."""
        return generated[:, 1:] if model.config.is_encoder_decoder else generated[:, batch["input_ids"].shape[1] :]

    @torch.no_grad()
    def generate(self, model, tokenizer, rows: list[PromptExample], settings, max_length: int, seed: int) -> list[str]:
        """Responses to `rows`' prompts under the `generation:` settings, decoded without special tokens; `model`
        is a PyTorch model or an exported one (optimum's ORTModel, which has no train/eval modes)."""
        training = isinstance(model, torch.nn.Module) and model.training
        if training:
            model.eval()
        outputs = []
        torch.manual_seed(seed)
        for batch in self.prompt_batches(tokenizer, rows, settings.batch_size, max_length):
            batch = batch.to(model.device)
            generated = model.generate(**batch, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                                       do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                                       pad_token_id=tokenizer.pad_token_id)
            outputs += tokenizer.batch_decode(self.new_tokens(model, generated, batch), skip_special_tokens=True)
        if training:
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

    def scored_generations(self, texts: dict[str, list[str]], rows: list[PromptExample]) -> Generations:
        """`texts` (responses to the first rows' prompts, per model) with their scores against the rows' responses."""
        references = [row.response for row in rows[: len(next(iter(texts.values())))]]
        return Generations(texts, {who: {"prompts": len(references), **self.generation_metrics(responses, references)}
                                   for who, responses in texts.items()})

    def prediction_records(self, rows, generations: Generations | None, label_ids, labels) -> list[dict]:
        texts = generations.texts if generations else {}
        return [{"origin": row.origin, "prompt": row.prompt, "reference": row.response,
                 **{f"generated_{who}": responses[i] for who, responses in texts.items() if i < len(responses)}}
                for i, row in enumerate(rows)]

    def report(self, generations: Generations | None, label_ids, labels, rows=None) -> str:
        """Markdown: generation metrics of the base and the fine-tuned model, then sample generations."""
        generations = generations or Generations()
        lines = ["### Generation on held-out test prompts", "",
                 "| model | prompts | BLEU | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|---|---|"]
        for who, metrics in generations.scores.items():
            lines.append(f"| {who} | {metrics['prompts']} | {metrics['bleu']:.2f} | {metrics['rouge1']:.4f} | "
                         f"{metrics['rouge2']:.4f} | {metrics['rougeL']:.4f} |")
        if rows and generations.texts:
            lines += ["", "### Sample generations (test)", "", "| prompt | reference | " + " | ".join(generations.texts) + " |",
                      "|---|---|" + "---|" * len(generations.texts)]
            for i, row in enumerate(rows[:12]):
                cells = [row.prompt, row.response] + [responses[i] if i < len(responses) else "" for responses in generations.texts.values()]
                lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")[:160] for c in cells) + " |")
        return "\n".join(lines) + "\n"
