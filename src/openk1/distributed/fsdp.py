"""FSDP2 for Hugging Face causal LMs: a sharded training copy beside the full model.

Under torchrun every rank keeps two views of the policy:

    model     the plain HF module (full weights): rollout, evaluation, save_pretrained
    trainee   `sharded_copy(model)`: FSDP2 (`fully_shard` per decoder layer, then the root),
              each rank holding 1/world of every parameter and of Adam's state

The optimizer is built on the trainee; after its steps `sync_weights(trainee, model)` gathers
the full state dict (an all-gather per tensor: every rank must call it) into the plain model,
the same hand-over a vLLM engine gets (rollout/vllm_engine.py). In one process `trainee(model)`
is `model` itself and `sync_weights` does nothing, so single-process runs are unchanged.

Gradients are SUMMED across ranks (divide factor 1): each rank's loss is already its exact share
of the global mini-batch loss (algo/aggregate.py `global_normaliser(all_reduce=True)`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from openk1.distributed import runtime


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a HF causal LM (Llama/Qwen/Mistral: model.model.layers)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module: Any = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return list(module)
    raise ValueError(f"{type(model).__name__}: no decoder layer list found to shard")


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """bf16: parameters cast to bf16 for forward and backward, gradients reduced in fp32 and
    the sharded master weights and Adam's state kept in fp32; fp32: no casting."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: torch.nn.Module, reshard_after_forward: bool = True,
                precision: str = "fp32") -> torch.nn.Module:
    """fully_shard every decoder layer, then the root (embeddings, final norm, LM head: tied
    weights stay in one unit), with `mixed_precision(precision)`; gradients summed over ranks.
    Modifies `model` in place."""
    policy = mixed_precision(precision)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)   # gloo has no PREMUL_SUM
    return model


def sharded_copy(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """A deep copy of `model` on this rank's device, sharded with FSDP2."""
    return shard_model(copy.deepcopy(model).to(runtime.device()), precision=precision)


def trainee(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """The module to train: an FSDP2 copy under torchrun (bf16 `precision`: its mixed-precision
    policy), `model` itself in one process (where bf16 is autocast or the lean forward's dtype)."""
    return sharded_copy(model, precision) if runtime.is_distributed() else model


def full_state_dict(model: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of model.state_dict() in full (DTensor shards all-gathered), on `device`.

    A collective for a sharded model: every rank must call it, in the same order.
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[name] = value.detach().to(device)
    return out


@torch.no_grad()
def sync_weights(trainee_: torch.nn.Module, model: torch.nn.Module) -> None:
    """Copy the trainee's weights into the plain model (nothing to do when they are one)."""
    if trainee_ is model:
        return
    device = next(model.parameters()).device
    model.load_state_dict(full_state_dict(trainee_, device))


def optimizer_state(trainee_: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The optimizer's state dict for a checkpoint: its own in one process; under FSDP2 the full
    (unsharded) one gathered to rank 0's CPU (a collective: every rank calls it; the others get
    None), so a run resumes exactly, with this or another number of ranks."""
    if not runtime.is_distributed():
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full: dict[str, Any] = get_optimizer_state_dict(trainee_, optimizer, options=options)
    return full if runtime.is_main() else None


def load_optimizer_state(trainee_: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Restore what `optimizer_state` saved (under FSDP2 each rank keeps its shards of it)."""
    if not runtime.is_distributed():
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(trainee_, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds (its shards under FSDP)."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
