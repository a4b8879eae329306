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
    address: str = ""
    num_cpus: int = Field(2, gt=0)
    rollout_workers: int = Field(1, gt=0)
    reward_workers: int = Field(1, gt=0)
    placement: Literal["disaggregated", "colocated"] = "disaggregated"
    engine: Literal["hf", "vllm"] = "hf"
    trainer_cpus: float = Field(1.0, ge=0.0)
    trainer_gpus: float = Field(0.0, ge=0.0)
    rollout_cpus: float = Field(0.5, ge=0.0)
    rollout_gpus: float = Field(0.0, ge=0.0)
    reward_cpus: float = Field(0.5, ge=0.0)
