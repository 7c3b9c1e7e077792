"""Mask search under a FLOPs constraint (Kwon et al. 2022, algorithm 1), on hand-made importances."""

from __future__ import annotations

import numpy as np
from transformers import BertConfig

from peftstd.export.prune import search_masks, unit_flops

CONFIG = BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64)


def flops(keep_heads, keep_neurons):
    head_cost, neuron_cost = unit_flops(CONFIG)
    return keep_heads.sum() * head_cost + keep_neurons.sum() * neuron_cost


def test_search_respects_the_budget_and_keeps_every_layer_alive():
    rng = np.random.default_rng(0)
    heads, neurons = rng.random((2, 2)), rng.random((2, 64))
    heads[0] = [10.0, 9.0]  # layer 0 matters most; layer 1 must still keep a head
    full = flops(np.ones_like(heads, bool), np.ones_like(neurons, bool))
    for ratio in (0.1, 0.3, 0.4):
        keep_heads, keep_neurons = search_masks(heads, neurons, ratio, CONFIG)
        assert flops(keep_heads, keep_neurons) <= (1 - ratio) * full
        assert keep_heads.any(1).all() and keep_neurons.any(1).all()


def test_search_keeps_the_most_important_units():
    heads = np.array([[5.0, 0.1], [4.0, 3.0]])
    neurons = np.tile(np.linspace(1.0, 0.0, 64), (2, 1))
    keep_heads, keep_neurons = search_masks(heads, neurons, 0.3, CONFIG)
    assert keep_heads[0, 0] and not keep_heads[0, 1]  # the unimportant head goes first
    for layer in range(2):  # within a layer, kept neurons are the most important ones
        kept = np.flatnonzero(keep_neurons[layer])
        assert kept.max() < 64 and (kept == np.arange(len(kept))).all()
