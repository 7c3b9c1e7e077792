"""Data loaders with dynamic padding and length-grouped batching.

Batches pad only to their own longest example; grouping similar lengths (transformers'
`LengthGroupedSampler`, the Trainer's `group_by_length`) removes most of the remaining padding.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from peftstd.tasks.base import EncodedSplit


def train_loader(split: EncodedSplit, collator, batch_size: int, group_by_length: bool) -> tuple[DataLoader, torch.Generator]:
    """The training loader and the generator of its order; seed it at each epoch start.

    The loader gets a generator of its own too: otherwise each `iter()` draws its base seed from the
    global torch RNG, and a resumed run would shift every later dropout mask by one draw.
    """
    generator = torch.Generator()
    if group_by_length:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=split.lengths, generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(split.features, generator=generator)
    loader = DataLoader(
        split.features, batch_size=batch_size, sampler=sampler, collate_fn=collator, generator=torch.Generator().manual_seed(0)
    )
    return loader, generator


def eval_loader(split: EncodedSplit, collator, batch_size: int) -> tuple[DataLoader, list[int]]:
    """A loader over the split sorted by length, and the order to undo the sort with."""
    order = sorted(range(len(split)), key=split.lengths.__getitem__)
    features = [split.features[i] for i in order]
    loader = DataLoader(features, batch_size=batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator().manual_seed(0))
    return loader, order
