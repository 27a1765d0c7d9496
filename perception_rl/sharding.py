"""Sharded training helpers: FSDP2 (ModelParallelStrategy) and FSDP1 (FSDPStrategy) around the policy.

In both cases the *policy* (not the LightningModule) is the sharded root, with one shard unit per vision
and decoder block. That keeps the GRPO step's several forward/backward passes, which happen inside
`training_step`, ordinary FSDP forwards and backwards; and `generate`, which bypasses the root's forward,
only needs the root's own parameters gathered around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from perception_rl.policy import decoder_layers, vision_blocks


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [*vision_blocks(model), *decoder_layers(model)]


def shard_fsdp2(model: torch.nn.Module, mesh, param_dtype: Literal["bfloat16", "float16"] | None) -> None:
    """fully_shard each block, then the root; `param_dtype` computes in low precision over fp32 master weights."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(getattr(torch, param_dtype), torch.float32) if param_dtype else MixedPrecisionPolicy()
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def shard_fsdp1(model: torch.nn.Module, strategy) -> torch.nn.Module:
    """Wrap the policy in FSDP1 with the strategy's sharding and mixed precision, blocks as units.

    Lightning then leaves the LightningModule unwrapped (it never wraps a module that already holds
    FSDP units), so backward passes inside `training_step` are not nested in a root forward.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=ModuleWrapPolicy({type(b) for b in _blocks(model)}),
        sharding_strategy=strategy.sharding_strategy,
        mixed_precision=strategy.mixed_precision_config,
        cpu_offload=strategy.cpu_offload,
        device_id=strategy.root_device,
        use_orig_params=True,
    )


def is_fsdp1(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or is_fsdp1(model)


@contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Gather the policy's weights once around `generate`, instead of once per decoded token.

    FSDP2 reshards each block after its forward, so every decoding step would all-gather every block again;
    here all blocks are unsharded up front and kept so until generation ends (the full weights are held for
    that long). FSDP1 gathers the root's own parameters; its blocks gather themselves in their forwards.
    """
    if is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, recurse=False, writeback=False):
            yield
    elif is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        model._get_fsdp_state()._lazy_init()  # private API; a first root forward would do the same
        blocks = [m for m in model.modules() if isinstance(m, FSDPModule) and m is not model]
        for block in blocks:
            block.set_reshard_after_forward(False, recurse=False)
        for unit in (model, *blocks):
            unit.unshard()
        try:
            yield
        finally:
            for unit in (model, *blocks):
                unit.reshard()
            for block in blocks:  # as `shard_fsdp2` made them
                block.set_reshard_after_forward(True, recurse=False)
    else:
        yield


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm across shards and return it (inf max_norm only measures)."""
    if is_fsdp1(model):
        norm = model.clip_grad_norm_(max_norm)
    else:  # plain tensors, or FSDP2 DTensors (the norm then comes back as a DTensor)
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def plain_name(name: str) -> str:
    """A parameter or module name without the wrappers FSDP1 and activation checkpointing insert."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name.removesuffix("_fsdp_wrapped_module").removesuffix(".")


def iter_full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every entry of the policy's state dict, one tensor at a time, on every rank.

    Sharded weights are all-gathered one parameter at a time on the device they live on (FSDP2), or one
    FSDP1 unit (a block) at a time, so every rank sees the full weights without holding them all at once
    or a state dict on CPU. A collective: every rank must iterate to the end, in step.
    """
    if is_fsdp1(model):
        yield from _iter_fsdp1_units(model)
        return
    for name, tensor in model.state_dict().items():
        yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _iter_fsdp1_units(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """FSDP1: each unit's own parameters, gathered while that unit alone is summoned."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    for prefix, unit in model.named_modules():
        if not isinstance(unit, FullyShardedDataParallel):
            continue
        # FSDP1's named_parameters() drops its wrapper prefixes, its named_modules() keeps them: compare plain names
        nested = [f"{plain_name(n)}." for n, m in unit.named_modules() if m is not unit and isinstance(m, FullyShardedDataParallel)]
        with FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=False):
            for local, tensor in unit.named_parameters():
                if not any(plain_name(local).startswith(n) for n in nested):  # a nested unit yields its own
                    # A copy: the gathered storage is freed when the unit reshards, and a consumer may keep
                    # a tensor longer (vLLM's reload buffers a layer's parts until the layer is complete).
                    yield plain_name(f"{prefix}.{local}" if prefix else local), tensor.detach().clone()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Full weights on CPU under their plain names when sharded (every rank must call); else None."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
