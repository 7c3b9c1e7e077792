"""Bottleneck adapters (Houlsby / Pfeiffer) through AdapterHub's `adapters` library.

On disk (`adapter/`): the library's own `save_adapter` output (adapter_config.json,
pytorch_adapter.bin) plus `head.safetensors` with the task head. Adapters cannot be
merged into the base weights; export keeps them in the graph as real modules.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftstd.basics.section import Section
from peftstd.errors import ConfigError
from peftstd.methods.base import Method, register

ADAPTER_NAME = "peftstd"
HEAD_FILE = "head.safetensors"


class AdapterSection(Section):
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="Bottleneck after the FFN only (Pfeiffer) or after both attention and FFN (Houlsby)."
    )
    reduction_factor: int = Field(16, ge=1, description="Hidden size divided by the bottleneck size.")
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = Field("relu", description="Activation inside the bottleneck.")


@register
class BottleneckAdapter(Method):
    name = "adapter"
    section = AdapterSection
    library = "adapters"
    recommended_learning_rate = 5e-4
    summary = "bottleneck adapters, Houlsby or Pfeiffer (AdapterHub adapters)"

    def check_architecture(self, model_type):
        import importlib

        from adapters.wrappers.model import get_adapter_interface, get_module_name

        if get_adapter_interface(model_type) is not None:
            return
        module = get_module_name(model_type)
        try:  # the same probe `adapters.init` uses
            importlib.import_module(f".{module}.modeling_{module}", "adapters.models")
        except ImportError:
            raise ConfigError(
                f"method 'adapter' does not support {model_type!r} models (AdapterHub adapters); use lora or full instead"
            ) from None

    def apply(self, model, section, wrapping):
        import adapters

        config_class = adapters.DoubleSeqBnConfig if section.placement == "houlsby" else adapters.SeqBnConfig
        adapters.init(model)
        model.add_adapter(
            ADAPTER_NAME, config=config_class(reduction_factor=section.reduction_factor, non_linearity=section.non_linearity)
        )
        model.train_adapter(ADAPTER_NAME)
        for name in wrapping.head_modules:
            model.get_submodule(name).requires_grad_(True)
        self._head_modules = wrapping.head_modules
        return model

    def save(self, model, out_dir, state_dict=None):  # never sharded (training.sharding.SHARDABLE_METHODS)
        from safetensors.torch import save_file

        model.save_adapter(str(out_dir), ADAPTER_NAME, with_head=False)
        head = {
            f"{module}.{key}": value.detach().contiguous()
            for module in self._head_modules
            for key, value in model.get_submodule(module).state_dict().items()
        }
        save_file(head, out_dir / HEAD_FILE)

    def load(self, task, base_path, weights_dir, labels, quantization=None):
        import adapters
        from safetensors.torch import load_file

        base = task.load_model(base_path, labels)
        adapters.init(base)
        base.load_adapter(str(weights_dir), load_as=ADAPTER_NAME, set_active=True, with_head=False)
        _, unexpected = base.load_state_dict(load_file(weights_dir / HEAD_FILE), strict=False)
        if unexpected:
            raise ValueError(f"{weights_dir / HEAD_FILE} holds weights the model lacks: {unexpected[:3]}")
        return base
