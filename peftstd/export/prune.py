"""Stage 3: post-training structured pruning of attention heads and FFN neurons.

After Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers":
1. importance of every head and neuron = diagonal Fisher information of a mask variable on it,
   summed over per-example gradients on the run's own training data;
2. mask search under a FLOPs constraint: for every possible number of kept heads, spend the rest of
   the budget on the most important neurons, and keep the split with the most total importance;
3. mask tuning: each layer's kept heads and FFN neurons are rescaled by least squares so that the
   projections' outputs match the unpruned ones on the same data (their mask rearrangement step is
   not done, and the inputs come from the unpruned network rather than layer by layer);
4. the masks become real structure: `prune_heads` removes heads, FFN matrices are sliced, so the
   exported graph is smaller and faster (unstructured sparsity would change neither in a dense graph).

No library does this for transformers models with an ONNX-friendly result, hence the code here.
It supports BERT-style encoders (`model.base_model.encoder.layer[i].attention/intermediate/output`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from peftstd.errors import UserError
from peftstd.runtime.inference import batches
from peftstd.runtime.taskdata import TaskData

FLOPS_SEQUENCE = 128  # attention cost per head depends on sequence length; counted at 128 tokens


def encoder_layers(model):
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[0], "intermediate"):
        raise UserError(f"--prune supports BERT-style encoders; {model.config.model_type!r} is not one")
    return layers


def unit_flops(config, sequence: int = FLOPS_SEQUENCE) -> tuple[float, float]:
    """Multiply-add FLOPs per token of one attention head and of one FFN neuron."""
    d = config.hidden_size
    head_dim = d // config.num_attention_heads
    return 8 * d * head_dim + 4 * sequence * head_dim, 4 * d


def fisher_importance(model, tokenizer, data: TaskData, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example squared gradients of head and neuron masks, summed: shapes [L, H] and [L, I]."""
    layers = encoder_layers(model)
    config = model.config
    head_mask = torch.ones(len(layers), config.num_attention_heads, requires_grad=True)
    neuron_masks = [torch.ones(layer.intermediate.dense.out_features, requires_grad=True) for layer in layers]
    hooks = [layer.intermediate.register_forward_hook(lambda m, i, out, mask=mask: out * mask)
             for layer, mask in zip(layers, neuron_masks)]
    head_fisher = torch.zeros_like(head_mask)
    neuron_fisher = [torch.zeros_like(m) for m in neuron_masks]
    model.eval()
    try:
        for index, batch in enumerate(batches(tokenizer, data, 1, max_length)):
            inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
            loss = model(**inputs, head_mask=head_mask, labels=torch.tensor([int(data.label_ids[index])])).loss
            head_grad, *neuron_grads = torch.autograd.grad(loss, [head_mask, *neuron_masks])
            head_fisher += head_grad.pow(2)
            for total, grad in zip(neuron_fisher, neuron_grads):
                total += grad.pow(2)
    finally:
        for hook in hooks:
            hook.remove()
    return head_fisher.numpy(), np.stack([f.numpy() for f in neuron_fisher])


def ranked_with_mandatory(importance: np.ndarray) -> np.ndarray:
    """Flat indices, most important first, with each layer's best unit ahead of everything else.

    Keeping at least one head and one neuron per layer keeps every layer a valid module in the graph;
    putting those units first makes the FLOPs search account for them instead of overshooting later.
    """
    flat = importance.ravel()
    mandatory = np.ravel_multi_index((np.arange(importance.shape[0]), importance.argmax(1)), importance.shape)
    rest = np.setdiff1d(np.argsort(-flat, kind="stable"), mandatory, assume_unique=True)
    rest = rest[np.argsort(-flat[rest], kind="stable")]
    return np.concatenate([mandatory, rest])


def search_masks(head_importance: np.ndarray, neuron_importance: np.ndarray, ratio: float, config) -> tuple[np.ndarray, np.ndarray]:
    """Boolean keep-masks maximizing total importance with FLOPs <= (1 - ratio) of the original (Kwon et al., alg. 1)."""
    head_cost, neuron_cost = unit_flops(config)
    layers = head_importance.shape[0]
    budget = (1 - ratio) * (head_importance.size * head_cost + neuron_importance.size * neuron_cost)
    head_order, neuron_order = ranked_with_mandatory(head_importance), ranked_with_mandatory(neuron_importance)
    head_cum = np.concatenate([[0], np.cumsum(head_importance.ravel()[head_order])])
    neuron_cum = np.concatenate([[0], np.cumsum(neuron_importance.ravel()[neuron_order])])
    best, best_split = -1.0, (layers, layers)
    for heads in range(layers, head_importance.size + 1):
        left = budget - heads * head_cost
        if left < layers * neuron_cost:
            break
        neurons = min(neuron_importance.size, int(left // neuron_cost))
        score = head_cum[heads] + neuron_cum[neurons]
        if score > best:
            best, best_split = score, (heads, neurons)
    keep_heads = np.zeros(head_importance.size, dtype=bool)
    keep_heads[head_order[: best_split[0]]] = True
    keep_neurons = np.zeros(neuron_importance.size, dtype=bool)
    keep_neurons[neuron_order[: best_split[1]]] = True
    return keep_heads.reshape(head_importance.shape), keep_neurons.reshape(neuron_importance.shape)


@torch.no_grad()
def projection_inputs(model, tokenizer, data: TaskData, max_length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the real-token inputs of the attention output projection and of the FFN down-projection."""
    layers = encoder_layers(model)
    attention: list[list[torch.Tensor]] = [[] for _ in layers]
    ffn: list[list[torch.Tensor]] = [[] for _ in layers]
    keep: list[torch.Tensor] = []

    def grab(store):
        return lambda module, inputs: store.append(inputs[0].reshape(-1, inputs[0].shape[-1]))

    hooks = [layer.attention.output.dense.register_forward_pre_hook(grab(attention[i])) for i, layer in enumerate(layers)]
    hooks += [layer.output.dense.register_forward_pre_hook(grab(ffn[i])) for i, layer in enumerate(layers)]
    try:
        for batch in batches(tokenizer, data, 16, max_length):
            inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
            keep.append(inputs["attention_mask"].reshape(-1).bool())
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    mask = torch.cat(keep)
    return [torch.cat(a)[mask].double() for a in attention], [torch.cat(f)[mask].double() for f in ffn]


@torch.no_grad()
def tune_scales(model, tokenizer, data: TaskData, keep_heads: np.ndarray, keep_neurons: np.ndarray, max_length: int,
                damping: float = 1e-3) -> None:
    """Least-squares rescaling of each layer's kept heads and FFN neurons ("mask tuning", Kwon et al. sec. 4.3).

    A unit's contribution to its projection's output is c_u = W[:, u] x_u. With G_ij = sum_t <c_i, c_j> the
    scales m of the kept set K solve G_KK m = G_K,all 1: the pruned output then matches the unpruned one
    as closely as least squares allows on the run's own data.
    """
    attention_inputs, ffn_inputs = projection_inputs(model, tokenizer, data, max_length)
    heads = model.config.num_attention_heads
    for index, layer in enumerate(encoder_layers(model)):
        # FFN neurons: G = (A^T A) * (W^T W), one unit per column.
        a, w = ffn_inputs[index], layer.output.dense.weight.double()
        gram = (a.T @ a) * (w.T @ w)
        solve_and_scale(gram, torch.from_numpy(keep_neurons[index]), layer.output.dense.weight, [[j] for j in range(w.shape[1])], damping)
        # Heads: contribution of head h is X_h W_h^T, blocks of head_dim columns.
        x, w = attention_inputs[index], layer.attention.output.dense.weight.double()
        size = w.shape[1] // heads
        blocks = [list(range(h * size, (h + 1) * size)) for h in range(heads)]
        contributions = torch.stack([x[:, b] @ w[:, b].T for b in blocks])  # heads x tokens x hidden
        gram = torch.einsum("htd,gtd->hg", contributions, contributions)
        solve_and_scale(gram, torch.from_numpy(keep_heads[index]), layer.attention.output.dense.weight, blocks, damping)


def solve_and_scale(gram: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor, columns: list[list[int]], damping: float) -> None:
    kept = keep.nonzero().flatten()
    system = gram[kept][:, kept].clone()
    system += damping * system.diagonal().mean() * torch.eye(len(kept), dtype=system.dtype)
    scales = torch.linalg.solve(system, gram[kept].sum(1))
    for unit, scale in zip(kept.tolist(), scales.tolist()):
        weight[:, columns[unit]] *= scale


def slice_linear(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    weight = linear.weight.index_select(dim, index).clone()
    bias = linear.bias.clone() if dim == 1 else linear.bias.index_select(0, index).clone()
    new = torch.nn.Linear(weight.shape[1], weight.shape[0])
    new.weight.data.copy_(weight)
    new.bias.data.copy_(bias)
    return new


def apply_structure(model, keep_heads: np.ndarray, keep_neurons: np.ndarray) -> None:
    """Physically remove pruned heads (transformers `prune_heads`) and FFN neurons (sliced matrices)."""
    heads_to_prune = {layer: [int(h) for h in np.flatnonzero(~keep_heads[layer])] for layer in range(keep_heads.shape[0])}
    model.prune_heads({layer: heads for layer, heads in heads_to_prune.items() if heads})
    for index, layer in enumerate(encoder_layers(model)):
        kept = torch.from_numpy(np.flatnonzero(keep_neurons[index]))
        layer.intermediate.dense = slice_linear(layer.intermediate.dense, kept, 0)
        layer.output.dense = slice_linear(layer.output.dense, kept, 1)


def encoder_flops(model) -> float:
    """Per-token multiply-add FLOPs of the heads and FFN neurons that are left."""
    head_cost, neuron_cost = unit_flops(model.config)
    total = 0.0
    for layer in encoder_layers(model):
        heads = layer.attention.self.num_attention_heads
        total += heads * head_cost + layer.intermediate.dense.out_features * neuron_cost
    return total


def prune_model(model, tokenizer, data: TaskData, ratio: float, max_length: int):
    """(pruned copy, report): remove `ratio` of the encoder FLOPs, keeping the most important structure."""
    pruned = copy.deepcopy(model).eval()
    encoder_layers(pruned)
    flops_before = encoder_flops(pruned)
    params_before = sum(p.numel() for p in pruned.parameters())
    head_importance, neuron_importance = fisher_importance(pruned, tokenizer, data, max_length)
    keep_heads, keep_neurons = search_masks(head_importance, neuron_importance, ratio, pruned.config)
    tune_scales(pruned, tokenizer, data, keep_heads, keep_neurons, max_length)
    apply_structure(pruned, keep_heads, keep_neurons)
    flops_after = encoder_flops(pruned)
    return pruned, {
        "method": "Fisher mask search under a FLOPs constraint + least-squares mask tuning (Kwon et al. 2022)",
        "requested_flops_reduction": ratio,
        "encoder_flops_per_token_before": flops_before,
        "encoder_flops_per_token_after": flops_after,
        "flops_reduction": 1 - flops_after / flops_before,
        "parameters_before": params_before,
        "parameters_after": sum(p.numel() for p in pruned.parameters()),
        "heads_kept_per_layer": keep_heads.sum(1).tolist(),
        "neurons_kept_per_layer": keep_neurons.sum(1).tolist(),
        "importance_examples": len(data.texts),
    }
