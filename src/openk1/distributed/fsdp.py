"""FSDP2 for Hugging Face causal LMs (and LLaVA VLMs): a sharded training copy beside the full model.

Under torchrun every rank keeps two views of the policy:

    model     the plain HF module (full weights): rollout, evaluation, save_pretrained
    trainee   `sharded_copy(model)`: FSDP2 (`fully_shard` per decoder layer, then the root),
              each rank holding 1/world of every parameter and of Adam's state

The optimizer is built on the trainee; after its steps `sync_weights(trainee, model)` gathers
the full state dict (an all-gather per tensor: every rank must call it) into the plain model,
the same hand-over a vLLM engine gets (rollout/vllm_engine.py). In one process `trainee(model)`
is `model` itself and `sync_weights` does nothing, so single-process runs are unchanged.

A vision-language model (LLaVA) runs its vision tower, projector and embedding lookup outside the
root's forward (models/vision.py `image_features`): `shard_model` makes them units of their own,
and `VisionAgreement` keeps the ranks' collectives paired when some ranks' rows have images and
others' have none.

Gradients are SUMMED across ranks (divide factor 1): each rank's loss is already its exact share
of the global mini-batch loss (algo/aggregate.py `global_normaliser(all_reduce=True)`).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from openk1.distributed import runtime


def _module_list(root: Any, paths: tuple[str, ...]) -> list[torch.nn.Module] | None:
    """The first of `paths` (dotted attribute names under `root`) that is a ModuleList."""
    for path in paths:
        module: Any = root
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return list(module)
    return None


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a HF causal LM (Llama/Qwen/Mistral: model.model.layers) or of a
    LLaVA's language model (model.model.language_model.layers)."""
    layers = _module_list(model, ("model.layers", "model.language_model.layers", "transformer.h",
                                  "gpt_neox.layers", "model.decoder.layers"))
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layer list found to shard")
    return layers


def vision_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """A LLaVA-layout VLM's modules that run outside the root's forward (models/vision.py
    `image_features` calls them directly), in the order they are sharded: the vision tower's
    encoder layers (CLIP, SigLIP: `encoder.layers`), the tower's other parts (embeddings, layer
    norms), the projector. [] for a text model.

    Not the tower itself: transformers looks up which hidden states a model records by its class,
    and fully_shard swaps the class (FSDPCLIPVisionModel records none: no features)."""
    base = getattr(model, "model", None)
    tower = getattr(base, "vision_tower", None)
    projector = getattr(base, "multi_modal_projector", None)
    if tower is None or projector is None:
        return []
    layers = _module_list(tower, ("encoder.layers", "vision_model.encoder.layers")) or []
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    parts = [child for child in tower.children() if any(id(p) not in in_layers for p in child.parameters())]
    return [*layers, *parts, projector]


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
    Modifies `model` in place.

    A vision-language model (LLaVA) computes its image features and input embeddings outside
    the root's forward (models/vision.py `image_features`, `embed`; models/vlm.py `scatter`), so
    what runs there is sharded in units of its own, each gathered by its own hooks when called:
    `vision_units` (the tower's encoder layers and other parts, the projector) and the input
    embeddings grouped with the LM head (tied weights share one unit; it stays gathered from the
    lookup to the head). The root is initialised at once, as its first forward would, since the
    first unit to run is now the tower's; `VisionAgreement` keeps the ranks' collectives in step."""
    policy = mixed_precision(precision)
    vision = vision_units(model)
    for unit in vision:
        unit.register_forward_hook(_copy_of_view)   # before FSDP's hooks
    for unit in [*vision, *decoder_layers(model)]:
        fully_shard(unit, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    if vision:
        hf: Any = model
        fully_shard([hf.get_input_embeddings(), hf.get_output_embeddings()],
                    reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)   # gloo has no PREMUL_SUM
    if vision:
        cast(FSDPModule, model)._get_fsdp_state()._lazy_init()   # no public call does it
        VisionAgreement(model)
    return model


def _copy_of_view(module: torch.nn.Module, args: Any, output: Any) -> Any:
    """A unit's output that is a view (the projector's, SigLIP's pooling head's), copied: FSDP
    hooks the unit's backward on its output tensor, which an in-place op on a view would drop
    (FSDP warns about every such output); None (the output kept) otherwise."""
    return output.clone() if isinstance(output, torch.Tensor) and output._base is not None else None


class VisionAgreement:
    """The hooks that keep a sharded VLM's collectives the same on every rank.

    Each FSDP unit gathers its parameters when it runs and reduces their gradients after the
    backward: every rank must run the same units in the same order. A forward with images runs
    the vision units (and the embedding lookup) before the root, one without images does not, so
    in a step where one rank's rows have images and another's have none the ranks would pair
    different collectives. Before each forward the ranks therefore agree (one all-reduce) whether
    any of them has images: the tower's pre-hook on a rank with images, the root's pre-hook on a
    rank without. If some rank has, each rank without runs the vision units on a blank stand-in
    image whose features enter its input embeddings times 0: the same gathers and reductions,
    a zero gradient. If none has, none runs them and the vision parameters get no gradient, as in
    one process (AdamW leaves them alone). Callers pass the forward's inputs by keyword."""

    def __init__(self, model: Any) -> None:
        vision = model.config.vision_config
        self.model = model
        self.blank = torch.zeros(1, getattr(vision, "num_channels", 3), vision.image_size, vision.image_size,
                                 device=next(model.parameters()).device)   # [1, C, H, W] on this rank's device
        self.agreed = False   # this forward's agreement is done (reset when the root's forward ends)
        model.model.vision_tower.register_forward_pre_hook(self.before_tower)
        model.register_forward_pre_hook(self.before_root, with_kwargs=True, prepend=True)   # before FSDP's
        model.register_forward_hook(self.after_root, always_call=True)

    def before_tower(self, module: torch.nn.Module, args: Any) -> None:
        if not self.agreed:
            self.agreed = True
            runtime.all_reduce_max(1.0)   # this rank has images

    def before_root(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
        if self.agreed:                   # the images ran before the root (image_features)
            return None
        if kwargs.get("pixel_values") is not None:   # HF's own forward runs the tower inside
            self.before_tower(module, args)
            return None
        self.agreed = True                # the stand-in's tower call must not agree again
        if runtime.all_reduce_max(0.0) == 0.0:
            return None                   # no rank has images
        from openk1.models.vision import image_features

        features = image_features(self.model, self.blank)                     # [1, tokens, d]
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = self.model.get_input_embeddings()(kwargs["input_ids"])   # [B, L, d]
        return args, {**kwargs, "input_ids": None, "inputs_embeds": embeds + features.sum() * 0.0}

    def after_root(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.agreed = False


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
    """Restore what `optimizer_state` saved (under FSDP2 each rank keeps its shards of it).

    A parameter that never had a gradient (a LLaVA tower's `post_layernorm`: the features are
    taken before it) has no Adam state in the checkpoint, and gets none back, as in one process:
    `strict` off accepts it, and the zero state set_optimizer_state_dict makes for it is dropped
    (its first step must be Adam's first)."""
    if not runtime.is_distributed():
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(trainee_, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
    for name, param in trainee_.named_parameters():
        if name not in state["state"]:
            optimizer.state.pop(param, None)


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds (its shards under FSDP)."""
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
