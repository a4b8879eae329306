"""`rl.ray`, the Ray placement of `openk1 rl --ray` (stages/rl_ray.py); no Ray import, so
RLConfig holds it whether or not Ray is installed.

    address          ""      start a private Ray on this machine (bound to 127.0.0.1);
                             "auto": join the cluster `ray start` made (multi-node)
    num_cpus         2       CPUs of the private Ray (ignored with an address)
    rollout_workers  1       rollout actors; the requests of an iteration are split among them
    reward_workers   1       reward actors; the responses are split among them
    placement        disaggregated | colocated
                     disaggregated: rollout actors on their own resources (rollout_gpus each);
                     colocated (hybrid): rollout actors share the trainer's GPU (give both
                     fractions, e.g. 0.5 + 0.5) and release memory in turn: the vLLM engine
                     sleeps after each rollout and wakes for the next weights; the trainer
                     frees its cached blocks before each rollout (HF on CPU: nothing to release)
    engine           hf | vllm   the rollout actors' engine (vllm: rollout/vllm_engine.py,
                                 settings `rl.vllm`: VLLMSettings there)
    trainer_cpus / trainer_gpus, rollout_cpus / rollout_gpus, reward_cpus
                     Ray resources of each actor (fractions allowed)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from openk1.config import Section


class RaySettings(Section):
    address: str = Field(
        "", description='"": a private Ray on this machine (127.0.0.1); "auto": the cluster `ray start` made')
    num_cpus: int = Field(2, gt=0, description="CPUs of the private Ray (ignored with an address)")
    rollout_workers: int = Field(1, gt=0, description="rollout actors; an iteration's requests are split among them")
    reward_workers: int = Field(1, gt=0, description="reward actors; the responses are split among them")
    placement: Literal["disaggregated", "colocated"] = Field(
        "disaggregated", description="rollout actors on their own resources, or sharing the trainer's GPU in turn")
    engine: Literal["hf", "vllm"] = Field("hf", description="the rollout actors' engine (vllm: settings in rl.vllm)")
    trainer_cpus: float = Field(1.0, ge=0.0, description="Ray CPUs of the trainer (fractions allowed)")
    trainer_gpus: float = Field(0.0, ge=0.0, description="Ray GPUs of the trainer")
    rollout_cpus: float = Field(0.5, ge=0.0, description="Ray CPUs of each rollout actor")
    rollout_gpus: float = Field(0.0, ge=0.0, description="Ray GPUs of each rollout actor")
    reward_cpus: float = Field(0.5, ge=0.0, description="Ray CPUs of each reward actor")
