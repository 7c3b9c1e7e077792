"""FGM adversarial training (Miyato et al. 2017): a second forward/backward pass on input embeddings
pushed along their loss gradient, r = epsilon * g / ||g|| per example.

The perturbation is applied to the embedding layer's output through a forward hook rather than to its
weight matrix (the common competition recipe), so it also works when the embeddings are frozen, as
they are under LoRA, AdaLoRA and adapters.
"""

from __future__ import annotations

import torch


class FGM:
    def __init__(self, model: torch.nn.Module, epsilon: float):
        self.epsilon = epsilon
        self.embeddings = model.get_input_embeddings()
        self.output: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.handle = self.embeddings.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if not torch.is_grad_enabled():  # evaluation
            return None
        if self.delta is not None:  # adversarial pass
            return output + self.delta.to(output.dtype)
        if not output.requires_grad:  # frozen embeddings: make their output a leaf that collects a gradient
            output = output.detach().requires_grad_(True)
        else:
            output.retain_grad()
        self.output = output
        return output

    def perturb(self) -> bool:
        """Set the perturbation from the gradient of the last clean pass; False when there was none."""
        grad = None if self.output is None else self.output.grad
        self.output = None
        if grad is None:
            return False
        norm = grad.float().flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        self.delta = (self.epsilon * grad.float() / norm).detach()
        return True

    def clear(self) -> None:
        self.delta = None

    def remove(self) -> None:
        self.handle.remove()
