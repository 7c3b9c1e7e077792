"""Sharded training (FSDP2) through Accelerate, on GPUs and on CPU over gloo, and the distributed setup a run got.

Accelerate turns `--use_fsdp` into FSDP only on accelerator devices: on a CPU-only machine the same launch silently
trains plain DDP (`DistributedType.MULTI_CPU`, the model in `DistributedDataParallel`). torch's FSDP2 (`fully_shard`)
does run on CPU over gloo, and Accelerate's own FSDP2 preparation uses it unchanged once its state says FSDP, so
`enable_cpu_fsdp` sets that state (Accelerate has no switch for it). What the run finally got is read back from the
prepared model and recorded (`distributed_setup`), so a silent fallback shows in the manifest.

A sharded model holds each parameter as a `DTensor` shard; `full_state` gathers whole tensors (a collective: every
rank calls it), so that what is saved is the same stock format as from one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from peftstd.errors import UserError

SHARDABLE_METHODS = ("full", "lora")  # AdaLoRA's rank allocator and the adapters library read whole tensors in place


def requested() -> str | None:
    """What the launcher asked for beyond data parallelism: 'fsdp', 'deepspeed' or None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def refuse_deepspeed() -> None:
    """Before the Accelerator exists (it fails on its own without the deepspeed package): a DeepSpeed launch is
    refused rather than trained as something else (on CPU, Accelerate would silently run plain DDP)."""
    if requested() == "deepspeed":
        raise UserError("the recipes do not run under DeepSpeed yet (ZeRO's partitioned optimizer state needs a checkpoint "
                        "format of its own); launch with recipes/accelerate/fsdp.yaml (fully sharded, like ZeRO-3) or ddp.yaml")


def enable_cpu_fsdp(accelerator) -> None:
    """On a CPU-only multi-process launch that asked for FSDP, make Accelerate shard instead of falling back to DDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if requested() != "fsdp" or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* variables, as Accelerate does
    if plugin.fsdp_version != 2:
        raise UserError(f"FSDP version {plugin.fsdp_version} needs a GPU; on CPU use fsdp_version: 2 (recipes/accelerate/fsdp.yaml)")
    # Every AcceleratorState() copies PartialState's fields in, so both carry the type.
    PartialState().distributed_type = DistributedType.FSDP
    state = AcceleratorState()
    state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin


def check_sharding_supported(accelerator, method: str, quantized: bool = False, optimizer: str = "adamw", fgm: bool = False,
                             methods: tuple[str, ...] = SHARDABLE_METHODS, objective: str | None = None) -> None:
    """One-line errors, before any weights load, for what a sharded run cannot do."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return
    problems = []
    if method not in methods:
        problems.append(f"method {method!r} (FSDP trains {', '.join(methods)} here)")
    if quantized:
        problems.append("model.quantization (a bitsandbytes base does not shard here)")
    if optimizer != "adamw":
        problems.append(f"training.optimizer {optimizer!r} (use adamw)")
    if fgm:
        problems.append("regularization.fgm_epsilon (FGM perturbs whole embedding tensors)")
    if objective == "masked-lm":  # Accelerate puts the decoder and the bias it shares with the head in two FSDP units
        problems.append("objective 'masked-lm' (the MLM head's tied decoder bias cannot be sharded by Accelerate's FSDP2)")
    if problems:
        raise UserError("FSDP cannot train with " + "; ".join(problems) + "; launch with recipes/accelerate/ddp.yaml instead")


def wrap_transformer_layers(accelerator, model: torch.nn.Module) -> None:
    """Give FSDP the model's transformer block class to wrap one by one. Accelerate takes it from the model's
    `_no_split_modules`, which BERT-family models leave empty, so they would be sharded as one unit (every weight
    gathered for every forward); then the class repeated in the model's longest `ModuleList` is used."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP or accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap:
        return
    if getattr(model, "_no_split_modules", None):
        return
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1]
    if stacks:
        accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = [type(max(stacks, key=len)[0]).__name__]


def reshard(model: torch.nn.Module) -> None:
    """Put every FSDP unit back into its sharded form. FSDP2 leaves a unit's parameters gathered after a forward
    without backward (evaluation, generation), as plain tensors; parameters must be read or written sharded."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shard_units(model: torch.nn.Module) -> int:
    if not torch.distributed.is_available():  # a torch build without distributed support shards nothing
        return 0
    from torch.distributed.fsdp import FSDPModule

    return sum(isinstance(module, FSDPModule) for module in model.modules())


def is_sharded(model: torch.nn.Module) -> bool:
    return shard_units(model) > 0


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def full_state(model: torch.nn.Module, only_trainable: bool = False) -> dict[str, torch.Tensor]:
    """Copies of whole parameter tensors on the CPU, on every rank (a collective when the model is sharded)."""
    reshard(model)
    DTensor = _dtensor()
    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().to("cpu", copy=True).contiguous()
            for name, p in model.named_parameters() if p.requires_grad or not only_trainable}


def saved_state(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The state dict to save weights from: gathered whole on rank 0 when sharded (a collective), else None (the
    model's own). A tied parameter appears once, under its first name, as transformers saves it."""
    unwrapped = accelerator.unwrap_model(model)
    if not is_sharded(unwrapped):
        return None
    reshard(model)
    state = accelerator.get_state_dict(model)
    first: dict[int, str] = {}
    tied = [name for name, p in unwrapped.named_parameters(remove_duplicate=False) if first.setdefault(id(p), name) != name]
    return {key: value for key, value in state.items() if key not in tied}


def _placed_like(value: torch.Tensor, parameter: torch.Tensor | None) -> torch.Tensor:
    """A whole tensor split like `parameter` when that is a shard (this rank keeps its own part), else as it is."""
    if not isinstance(parameter, _dtensor()):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(parameter.dtype), parameter.device_mesh, parameter.placements)


def load_full_state(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into the model's parameters, each rank keeping its own shard when sharded."""
    reshard(model)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in values.items():
            parameters[name].copy_(_placed_like(value, parameters[name]))


def whole(tree: Any) -> Any:
    """`tree` (nested dicts of tensors, e.g. a method's snapshot) with every shard gathered whole (a collective)."""
    if isinstance(tree, dict):
        return {key: whole(value) for key, value in tree.items()}
    return tree.full_tensor() if isinstance(tree, _dtensor()) else tree


def sharded_like(snapshot: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """A method snapshot saved whole, its `weights` sharded again like the model's parameters."""
    if not snapshot or not isinstance(snapshot.get("weights"), dict):
        return snapshot
    reshard(model)
    parameters = dict(model.named_parameters())
    return {**snapshot, "weights": {name: _placed_like(value, parameters.get(name)) for name, value in snapshot["weights"].items()}}


def optimizer_state(model: torch.nn.Module, optimizer) -> dict[str, Any]:
    """The optimizer's state; for a sharded model the whole (unsharded) state keyed by parameter name."""
    if not is_sharded(model):
        return optimizer.state_dict()
    reshard(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict[str, Any]) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def distributed_setup(accelerator, model: torch.nn.Module) -> dict[str, Any]:
    """What the launch asked for and what the prepared model is, for the manifest and the banner."""
    unwrapped = accelerator.unwrap_model(model)
    return {"requested": requested() or ("ddp" if accelerator.num_processes > 1 else "none"),
            "type": str(accelerator.distributed_type).rsplit(".", 1)[-1], "wrapper": type(model).__name__,
            "sharded_parameters": is_sharded(unwrapped), "shard_units": shard_units(unwrapped), "world_size": accelerator.num_processes,
            "machines": accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))}
