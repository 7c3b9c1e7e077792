"""Training sequences from a text corpus: sentences for masked-LM, packed fixed-size blocks for causal-LM."""

from __future__ import annotations

from peftstd.tasks.base import EncodedSplit

IS_NEXT, RANDOM_NEXT = 0, 1  # BERT's next_sentence_label: 0 when sequence B continues sequence A
INDEX = "example_index"  # a masked-LM feature's position in its split (seeds its batch's masks)


def sentence_pairs(texts: list[str], seed: int) -> tuple[list[str], list[str], list[int]]:
    """BERT's next-sentence pairs: each text but the last with its successor, or (probability 0.5) with a
    random text that is neither itself nor its successor; the label says which."""
    import random

    rng = random.Random(seed)
    first, second, labels = [], [], []
    for i in range(len(texts) - 1):
        j, label = i + 1, IS_NEXT
        if len(texts) > 2 and rng.random() < 0.5:
            label = RANDOM_NEXT
            while j in (i, i + 1):
                j = rng.randrange(len(texts))
        first.append(texts[i])
        second.append(texts[j])
        labels.append(label)
    return first, second, labels


def masked_lm_features(tokenizer, rows, cfg):
    """One sequence per text (truncated to model.max_length), or with masking.next_sentence one text pair
    per text, and the BERT-style masking collator (80% [MASK], 10% random token, 10% unchanged). With
    masking.whole_word, all pieces of a selected word become [MASK]: transformers' whole-word masking has
    no random-replacement step (and its own fallback to that setting crashes in 4.57, so it is passed
    explicitly)."""
    from transformers import DataCollatorForLanguageModeling

    whole_word = cfg.masking.whole_word
    texts, pairs, next_labels = [r.text for r in rows], None, None
    if cfg.masking.next_sentence:
        texts, pairs, next_labels = sentence_pairs(texts, cfg.training.seed)
    encoded = tokenizer(texts, pairs, truncation=True, max_length=cfg.model.max_length,
                        return_special_tokens_mask=True, return_offsets_mapping=whole_word)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping") if k in encoded]
    features = [{k: encoded[k][i] for k in keys} | {INDEX: i} for i in range(len(texts))]
    if next_labels is not None:
        for feature, label in zip(features, next_labels):
            feature["next_sentence_label"] = label
    replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word else {}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=cfg.masking.probability,
                                               whole_word_mask=whole_word, **replace)
    return EncodedSplit(features, [len(f["input_ids"]) for f in features]), PerBatchMasks(collator)


class PerBatchMasks:
    """A masking collator whose masks depend only on the seed and on which examples the batch holds.

    accelerate's data loader collates one batch ahead of the training step, so masks drawn from the global generator
    would be drawn before a checkpoint saves that generator's state, and drawn again from it after a resume: a resumed
    run would mask differently. Here each batch is masked under a seed made of `torch.initial_seed()` (the recipe's
    `training.seed`; `fixed_masks`' own seed for validation) and the batch's example indices, and the global generator
    is left untouched."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]):
        import hashlib

        import torch

        indices = [feature[INDEX] for feature in features]
        digest = hashlib.sha256(f"{torch.initial_seed()}:{indices}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest[:8], "little"))
            return self.collator([{k: v for k, v in feature.items() if k != INDEX} for feature in features])


def causal_blocks(tokenizer, rows, block_size: int):
    """The texts tokenized, joined with the end-of-text token and cut into `block_size` blocks (the
    remainder is dropped), with the causal-LM collator (labels = inputs; the model shifts them)."""
    from transformers import DataCollatorForLanguageModeling

    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream = [token for ids in tokenizer([r.text for r in rows], add_special_tokens=False)["input_ids"] for token in ids + separator]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    features = [{"input_ids": block, "attention_mask": [1] * block_size} for block in blocks]
    return EncodedSplit(features, [block_size] * len(blocks)), DataCollatorForLanguageModeling(tokenizer, mlm=False)
