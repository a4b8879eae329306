"""Colocated (hybrid) RL: training and inference take turns on one device (report §2.6.3).

    rollout phase   the trainer's optimizer state (and its parameters, when the engine holds
                    its own copy of the weights, e.g. vLLM) is offloaded to host memory;
                    gradients are already freed (zero_grad(set_to_none=True) after each step)
    update phase    the engine sleeps (vLLM frees its KV cache and offloads its weights), the
                    trainer's state comes back; after the update the new weights go to the
                    engine (stages/rl.py), without restarting it

`TrainState.offload` copies every state tensor to the host (pinned memory on CUDA, so the copy
back is a DMA) and replaces it on the device by an empty placeholder, which frees the device
memory; `reload` copies them back. The round trip is exact: the same bits come back, so an
iteration's result does not depend on `colocate` (tests/distributed/test_colocate.py).
`phase_memory` is what the RL stage logs per phase (`memory/<phase>_gb`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class TrainState:
    """The trainer's device-resident state that a rollout phase does not need."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter] = ()) -> None:
        self.optimizer, self.params = optimizer, list(params)
        self.host: dict[int, Any] = {}       # id(placeholder in the optimizer state) -> (host copy, device)
        self.param_host: list[Any] = []      # per parameter, in order: (host copy, device)
        self.offloaded = False

    def offload(self) -> None:
        """Move the optimizer's state tensors (and `params`) to the host; free them on the device."""
        if self.offloaded:
            return
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.numel() > 1:   # `step` scalars stay
                    state[key] = self._stash(value)
        for p in self.params:   # `p.data` is a new wrapper at each access: kept by position, not id
            placeholder = self._stash(p.data)
            self.param_host.append(self.host.pop(id(placeholder)))
            p.data = placeholder
        self.offloaded = True

    def reload(self) -> None:
        """Copy every offloaded tensor back to its device."""
        if not self.offloaded:
            return
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if id(value) in self.host:
                    state[key] = self._restore(value)
        for p, (copy, device) in zip(self.params, self.param_host, strict=True):
            p.data = copy.to(device, non_blocking=True)
        self.param_host = []
        if self.host:
            raise RuntimeError(f"{len(self.host)} offloaded tensors were not restored")
        self.offloaded = False

    def _stash(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of `tensor`; returns the empty placeholder that replaces it."""
        pinned = tensor.device.type == "cuda"
        copy = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pinned)
        copy.copy_(tensor)
        placeholder = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        self.host[id(placeholder)] = (copy, tensor.device)
        return placeholder

    def _restore(self, placeholder: torch.Tensor) -> torch.Tensor:
        copy, device = self.host.pop(id(placeholder))
        restored: torch.Tensor = copy.to(device, non_blocking=True)
        return restored


def resident_bytes(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], device: torch.device) -> int:
    """Bytes of the trainer's parameters and optimizer state that sit on `device` now."""
    tensors = list(params) + [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device == device)


def start_phase(device: torch.device) -> None:
    """A phase begins: on CUDA, the allocator's peak counts from here."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def phase_memory(device: torch.device, optimizer: torch.optim.Optimizer,
                 params: Sequence[torch.Tensor]) -> dict[str, float]:
    """What the phase that ends holds on the device, in GB: on CUDA the allocator's peak since
    `start_phase` (all tensors: weights, KV cache, activations) and the trainer's resident state;
    on the CPU the trainer's resident state only. The next phase starts here."""
    out = {"train_state_gb": resident_bytes(optimizer, params, device) / 2**30}
    if device.type == "cuda":
        out["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    start_phase(device)
    return out
