"""Sharded training through Accelerate (FSDP2, DeepSpeed ZeRO-2/3), on GPUs and on CPU over gloo, and the
distributed setup a run got.

Accelerate turns `--use_fsdp` into FSDP only on accelerator devices: on a CPU-only machine the same launch silently
trains plain DDP (`DistributedType.MULTI_CPU`, the model in `DistributedDataParallel`). torch's FSDP2 (`fully_shard`)
does run on CPU over gloo, and Accelerate's own FSDP2 preparation uses it unchanged once its state says FSDP, so
`enable_cpu_fsdp` sets that state (Accelerate has no switch for it). What the run finally got is read back from the
prepared model and recorded (`distributed_setup`), so a silent fallback shows in the manifest.

A sharded model holds each parameter as a `DTensor` shard; `full_state` gathers whole tensors (a collective: every
rank calls it), so that what is saved is the same stock format as from one process.

DeepSpeed, like FSDP, is started by Accelerate only for an accelerator device; on CPU it runs once the Accelerator is
built with `cpu=False` and the gloo backend named (`accelerator_options`). ZeRO-2 keeps whole parameters on every
rank and splits the optimizer state and gradients; ZeRO-3 also splits the parameters (a module holds empty
placeholders outside `settled`). Each rank's ZeRO optimizer state is its own partition: checkpoints gather all of
them to rank 0 and every rank loads the list (DeepSpeed's own checkpoints would have every rank write files).
"""

from __future__ import annotations

import contextlib
import importlib.util
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


def accelerator_options(precision: str) -> dict[str, Any]:
    """Keyword arguments for the run's `Accelerator`, before it exists. On a CPU-only machine `cpu=True` (without it
    torchrun workers each run alone instead of over gloo), except under DeepSpeed, which Accelerate starts only with
    `cpu=False`; DeepSpeed then picks its CPU accelerator, and gloo is named (that accelerator would take Intel's
    oneCCL wherever its bindings are installed).
    Under DeepSpeed bf16 is torch autocast inside the engine (`configure_deepspeed`), as in every other launch,
    not DeepSpeed's bf16 mode, which would cast the weights themselves."""
    from accelerate.utils import InitProcessGroupKwargs

    from peftstd.training.precision import accelerate_name

    on_cuda = torch.cuda.is_available()
    if requested() != "deepspeed":
        return {"cpu": not on_cuda, "mixed_precision": accelerate_name(precision)}
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("this launch asks for DeepSpeed, which is not installed: pip install 'peftstd[deepspeed]' "
                        "(or launch with recipes/accelerate/fsdp.yaml)")
    if precision == "fp16":
        raise UserError("training.precision fp16 does not run under DeepSpeed here; use bf16 (torch autocast, fp32 weights) or fp32")
    options: dict[str, Any] = {"cpu": False, "mixed_precision": "no"}
    if not on_cuda:
        options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    return options


def configure_deepspeed(accelerator, precision: str, max_grad_norm: float | None) -> None:
    """Fill the launch's DeepSpeed config from the recipe's settings (clipping, bf16 autocast), and refuse in one
    line what the recipe's own optimizer, schedule and precision would conflict with."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    zero = config.get("zero_optimization", {})
    clipping = float(max_grad_norm or 0.0)
    problems = []
    if zero.get("stage") not in (2, 3):
        problems.append(f"zero_optimization.stage {zero.get('stage')} (2 or 3)")
    problems += [f"its {section!r} section (training.{section} decides)" for section in ("optimizer", "scheduler") if section in config]
    problems += [f"{key}.enabled (training.precision decides)" for key in ("bf16", "fp16") if config.get(key, {}).get("enabled") is True]
    problems += [f"zero_optimization.{key} (offloading replaces the recipe's optimizer with DeepSpeed's CPU Adam)"
                 for key in ("offload_optimizer", "offload_param") if zero.get(key, {}).get("device", "none") != "none"]
    if accelerator.state.deepspeed_plugin.zero3_init_flag:
        problems.append("zero3_init_flag (a base loaded partitioned breaks peft's copy of the task head; set it false)")
    if config.get("gradient_clipping", "auto") not in ("auto", clipping):
        problems.append(f"gradient_clipping {config['gradient_clipping']} (training.max_grad_norm is {clipping})")
    if problems:
        raise UserError("DeepSpeed cannot train with the launch's " + "; ".join(problems))
    config["gradient_clipping"] = clipping
    if precision == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}


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


@contextlib.contextmanager
def whole_at_load(accelerator):
    """Load the base model whole under ZeRO-3; DeepSpeed partitions it when the engine is built. Accelerate registers
    the ZeRO-3 config with transformers whatever `zero3_init_flag` says, so transformers would load the weights
    already partitioned, and peft's copy of a partitioned task head (`modules_to_save`) is then garbage."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # generation under ZeRO-3 needs it (transformers then keeps ranks in step)


def float32_module(model: torch.nn.Module) -> torch.nn.Module:
    """The prepared model to run in float32: under DeepSpeed its inner module, since the engine autocasts every
    forward when bf16 is on, even inside `torch.autocast(enabled=False)` (ZeRO-3's gathering hooks sit on the
    inner modules, so they still run); otherwise the model itself."""
    return model.module if type(model).__name__ == "DeepSpeedEngine" else model


def check_sharding_supported(accelerator, method: str, quantized: bool = False, optimizer: str = "adamw", fgm: bool = False,
                             methods: tuple[str, ...] = SHARDABLE_METHODS, objective: str | None = None) -> None:
    """One-line errors, before any weights load, for what a sharded run cannot do."""
    from accelerate.utils import DistributedType

    kind = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed"}.get(accelerator.distributed_type)
    if kind is None:
        return
    problems = []
    if method not in methods:
        problems.append(f"method {method!r} ({kind} trains {', '.join(methods)} here)")
    if quantized:
        problems.append("model.quantization (a bitsandbytes base does not shard here)")
    if optimizer != "adamw":
        problems.append(f"training.optimizer {optimizer!r} (use adamw)")
    if fgm:
        problems.append("regularization.fgm_epsilon (FGM perturbs whole embedding tensors)")
    if objective == "masked-lm" and kind == "FSDP":  # Accelerate puts the decoder and its tied bias in two FSDP units
        problems.append("objective 'masked-lm' (the MLM head's tied decoder bias cannot be sharded by Accelerate's FSDP2)")
    if problems:
        raise UserError(f"{kind} cannot train with " + "; ".join(problems) + "; launch with recipes/accelerate/ddp.yaml instead")


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


def partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 holds the model's parameters split across ranks (each is a `ds_id` placeholder)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def settled(model: torch.nn.Module, modify: bool = False):
    """Parameters in the form they are read and written in, within the block: FSDP units resharded (see `reshard`),
    ZeRO-3 parameters gathered whole (a collective: every rank enters); with `modify`, what rank 0 wrote is
    partitioned again on the way out (every rank writes the same values here). Unsharded models: a no-op."""
    reshard(model)
    if not partitioned(model):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0 if modify else None):
        yield


def layout(accelerator) -> str | None:
    """How the training state is split across processes: 'fsdp', 'zero-2', 'zero-3', or None (whole on every rank).
    Recorded in checkpoints, which resume only under the same layout."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return f"zero-{accelerator.state.deepspeed_plugin.zero_stage}"
    return None


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
    DTensor = _dtensor()
    with settled(model):
        return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().to("cpu", copy=True).contiguous()
                for name, p in model.named_parameters() if p.requires_grad or not only_trainable}


def saved_state(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The state dict to save weights from: gathered whole on rank 0 when sharded (a collective), else None (the
    model's own). A tied parameter appears once, under its first name, as transformers saves it."""
    unwrapped = accelerator.unwrap_model(model)
    if partitioned(unwrapped):  # gathered one module at a time, kept on rank 0 (what Accelerate does with the flag)
        state = model._zero3_consolidated_16bit_state_dict() or {}
    elif is_sharded(unwrapped):
        reshard(model)
        state = accelerator.get_state_dict(model)
    else:
        return None
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
    with settled(model, modify=True), torch.no_grad():
        parameters = dict(model.named_parameters())
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


def _zero_optimizer(optimizer):
    """DeepSpeed's ZeRO optimizer behind Accelerate's wrapper, or None."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if type(inner).__name__.startswith("DeepSpeedZeroOptimizer") else None


def optimizer_state(model: torch.nn.Module, optimizer) -> Any:
    """The optimizer's state (a collective when split): for an FSDP model the whole state keyed by parameter name;
    under ZeRO every rank's own partition, gathered to a list on rank 0 (None elsewhere)."""
    if zero := _zero_optimizer(optimizer):
        main = torch.distributed.get_rank() == 0
        states = [None] * torch.distributed.get_world_size() if main else None
        torch.distributed.gather_object(zero.state_dict(), states, dst=0)
        return states
    if not is_sharded(model):
        return optimizer.state_dict()
    reshard(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: Any) -> None:
    if zero := _zero_optimizer(optimizer):  # each rank takes its partition from the list; fp32 master weights too
        zero.load_state_dict(state, load_from_fp32_weights=True)
        return
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
            "layout": layout(accelerator), "sharded_parameters": is_sharded(unwrapped) or partitioned(unwrapped),
            "shard_units": shard_units(unwrapped), "world_size": accelerator.num_processes,
            "machines": accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))}
