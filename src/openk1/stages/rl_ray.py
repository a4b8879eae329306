"""`openk1 rl --ray`: the RL loop with rollout workers, reward workers and the trainer as Ray actors.

    driver ── Trainer actor: rl.run(cfg, make_engine=RayEngine, score=RayScorer)
                 │   (the loop, the iteration math, eval, checkpoints: all stages/rl.py)
                 ├── RayEngine.sample(requests) ─▶ RolloutWorker actors (requests split among them)
                 │     (RayEngine is a RolloutEngine, rollout/engine.py: rl.py cannot tell it apart)
                 │     weights pushed first when the policy changed: ray.put(state_dict) once,
                 │     load_weights(ref, version) on every worker; version = optimizer steps so far
                 └── RayScorer(responses, problems) ─▶ RewardWorker actors (responses split among them)

Versions: a rollout worker holds the version it last loaded and refuses (StaleWeightsError) a
request for any other version, and refuses weights older than the ones it holds, so no
rollout is ever sampled from a policy the trainer did not ask for.

Placement (`rl.ray`, distributed/settings.py): disaggregated (rollout actors on their own CPUs/GPUs)
or colocated (rollout actors share a GPU with the trainer actor: the vLLM engine sleeps after
each rollout and wakes for the next weights, and the trainer empties its CUDA cache before each
rollout). Not yet true on a GPU: the trainer's model stays on the CPU (one-process `rl` has no
device setting), so colocation frees nothing of the trainer's, and the vLLM weight push has
never run (docs/scaling.md: what has and has not been run).

Multi-node: `ray start --head` on one node, `ray start --address HEAD:6379` on the others, then
`openk1 rl --ray --set ray.address=auto ...` on the head (docs/scaling.md "Ray").
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import ray
import torch
from ray._private import ray_constants
from torch.optim.optimizer import register_optimizer_step_post_hook

from openk1.distributed import runtime
from openk1.distributed.settings import RaySettings
from openk1.errors import OpenK1Error
from openk1.memory import keep_freed_memory
from openk1.models.forward import PRECISIONS
from openk1.models.io import load_model
from openk1.models.prompting import PromptSettings
from openk1.rewards.base import Score
from openk1.rewards.scoring import RewardConfig, score_many
from openk1.rollout.engine import Request, RolloutEngine, requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig, concat_rollouts
from openk1.rollout.vllm_engine import VLLMEngine, VLLMSettings
from openk1.stages import rl
from openk1.types import Problem, Rollout


class StaleWeightsError(RuntimeError):
    """A rollout worker was asked for a policy version it does not hold."""


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, balanced shares of `items`, in order.

    >>> split([1, 2, 3, 4, 5], 2)
    [[1, 2, 3], [4, 5]]
    """
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def make_rollout_engine(kind: str, model_path: str, sampling: SamplingConfig, vllm: VLLMSettings | None,
                        precision: str = "fp32", prompts: PromptSettings | None = None) -> RolloutEngine:
    """A rollout worker's engine, on the policy's prompt format and stop ids (models/prompting.py)."""
    if kind == "vllm":
        return VLLMEngine(model_path, sampling, vllm, prompts)
    device = runtime.device()   # the actor's GPU when Ray gave it one
    model, tokenizer = load_model(model_path, prompts=prompts, device=device)
    return HFEngine(model, tokenizer, sampling, PRECISIONS[runtime.compute_precision(precision, device)])


class RolloutWorker:
    """Holds one rollout engine and the policy version of its weights (0: as loaded)."""

    def __init__(self, kind: str, model_path: str, sampling: SamplingConfig, vllm: VLLMSettings | None,
                 colocated: bool, precision: str = "fp32", prompts: PromptSettings | None = None) -> None:
        keep_freed_memory()   # an actor's own process: as `openk1` does at start
        self.engine = make_rollout_engine(kind, model_path, sampling, vllm, precision, prompts)
        self.version, self.colocated = 0, colocated
        self._sleep()

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        if version < self.version:
            raise StaleWeightsError(f"weights of version {version} offered, version {self.version} held")
        if isinstance(self.engine, VLLMEngine):   # asleep: wakes the weights only, kept for the rollout
            self.engine.load_versioned(state, version)
        else:
            with self._awake():
                self.engine.load_weights(state)
        self.version = version
        return version

    def sample(self, requests: list[Request], version: int) -> Rollout:
        if version != self.version:
            raise StaleWeightsError(f"rollout of version {version} asked, version {self.version} held")
        with self._awake():
            return self.engine.sample(requests)

    @contextlib.contextmanager
    def _awake(self) -> Iterator[None]:
        if self.colocated:
            self.engine.wake_up()
        try:
            yield
        finally:
            self._sleep()

    def _sleep(self) -> None:
        if self.colocated:
            self.engine.sleep()


class RewardWorker:
    def score(self, responses: list[str], problems: list[Problem], workers: int,
              rewards: RewardConfig | None) -> list[Score]:
        return score_many(responses, problems, workers, rewards=rewards)


class RayScorer:
    """A Scorer (rewards/scoring.py) over reward actors: responses split among them, order kept."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    def __call__(self, responses: list[str], problems: list[Problem], workers: int = 0,
                 rewards: RewardConfig | None = None) -> list[Score]:
        shares = [(w, t, p) for w, t, p in zip(self.workers, split(responses, len(self.workers)),
                                                split(problems, len(self.workers))) if t]
        parts: list[list[Score]] = ray.get([w.score.remote(t, p, workers, rewards) for w, t, p in shares])
        return [s for part in parts for s in part]


class RayEngine:
    """A RolloutEngine in the trainer's process, backed by rollout actors.

    `sleep` and `wake_up` do nothing here: in colocated placement each rollout actor wakes its
    own engine for a call and puts it back to sleep after it (RolloutWorker). `exact_logp`: the
    actors' engine's (False for vLLM: the RL stage recomputes log pi_theta_i)."""

    exact_logp = True

    def __init__(self, model: Any, tokenizer: Any, workers: list[Any], colocated: bool) -> None:
        self.model, self.tokenizer, self.workers, self.colocated = model, tokenizer, workers, colocated
        self.version, self.pushed = 0, -1    # -1: push at the first rollout (resumed weights)
        self.push_seconds: list[float] = []
        self._hook = register_optimizer_step_post_hook(self._stepped)   # version = steps taken

    def _stepped(self, *_: Any) -> None:
        self.version += 1

    def push_weights(self) -> None:
        """Send the trainer's current weights to every rollout worker (once per version)."""
        if self.pushed != self.version:
            self.load_weights({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """`state` becomes the current version on every worker: ray.put once, then each loads."""
        t0 = time.perf_counter()
        ref = ray.put(state)
        ray.get([w.load_weights.remote(ref, self.version) for w in self.workers])
        self.pushed = self.version
        self.push_seconds.append(time.perf_counter() - t0)

    def sample(self, requests: list[Request]) -> Rollout:
        self.push_weights()
        if self.colocated and torch.cuda.is_available():
            torch.cuda.empty_cache()             # hand the GPU's free memory to the rollout
        shares = [(w, s) for w, s in zip(self.workers, split(requests, len(self.workers))) if s]
        parts: list[Rollout] = ray.get([w.sample.remote(s, self.version) for w, s in shares])
        return concat_rollouts(parts, self.tokenizer.pad_token_id)

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        return self.sample(requests_for(self.tokenizer, prompts, samples_per_prompt, seed))

    def sleep(self) -> None:
        """Nothing here: the rollout actors sleep between calls themselves (class doc)."""

    def wake_up(self) -> None:
        """Nothing here (see `sleep`)."""

    def close(self) -> None:
        self._hook.remove()


class Trainer:
    """Runs stages/rl.py's `run` with Ray-backed rollout and reward workers."""

    def run(self, cfg_values: dict[str, Any], rollout_workers: list[Any], reward_workers: list[Any]
            ) -> dict[str, Any]:
        keep_freed_memory()
        cfg = rl.RLConfig.model_validate(cfg_values)
        engines: list[RayEngine] = []

        def make_engine(model: Any, tokenizer: Any) -> RayEngine:
            engines.append(RayEngine(model, tokenizer, rollout_workers, cfg.ray.placement == "colocated"))
            engines[-1].exact_logp = cfg.ray.engine != "vllm"
            return engines[-1]

        summary = rl.run(cfg, make_engine=make_engine, score=RayScorer(reward_workers))   # closes the engine
        pushes = engines[0].push_seconds if engines else []
        return summary | {"ray": {"weight_pushes": len(pushes), "push_seconds": sum(pushes),
                                  "policy_version": engines[0].version if engines else 0}}


def init_ray(settings: RaySettings) -> bool:
    """Join `settings.address`, or start a private Ray bound to 127.0.0.1; True if started here."""
    if ray.is_initialized():
        return False
    if settings.address:
        ray.init(address=settings.address)
        return False
    # loopback only: this process's constant (ray is imported) and its children's environment
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for key in ("RAY_agent_register_timeout_ms", "RAY_raylet_start_wait_time_s"):   # slow, busy CPUs:
        os.environ.setdefault(key, "180000" if key.endswith("_ms") else "180")     # 30 s is not enough
    ray_constants.ENABLE_RAY_CLUSTER = False
    for attempt in range(3):   # ray.init gives a local raylet 30 s (fixed): retry on a busy machine
        try:
            ray.init(num_cpus=settings.num_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False)
            return True
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    return True


def run(cfg: rl.RLConfig) -> dict[str, Any]:
    """`openk1 rl --ray`: place the actors, run the trainer, return its summary."""
    if cfg.engine != "hf":
        raise OpenK1Error("rl --ray: the rollout actors' engine is ray.engine; leave `engine` (the in-process "
                          "engine of plain `openk1 rl`) at hf")
    s: RaySettings = cfg.ray
    started = init_ray(s)
    try:
        colocated = s.placement == "colocated"
        rollout_cls = ray.remote(num_cpus=s.rollout_cpus, num_gpus=s.rollout_gpus)(RolloutWorker)
        reward_cls = ray.remote(num_cpus=s.reward_cpus)(RewardWorker)
        trainer_cls = ray.remote(num_cpus=s.trainer_cpus, num_gpus=s.trainer_gpus)(Trainer)
        rollouts = [rollout_cls.remote(s.engine, cfg.model, cfg.sampling, cfg.vllm, colocated,
                                        cfg.precision, PromptSettings(cfg.prompt_format, cfg.system_prompt))
                    for _ in range(s.rollout_workers)]
        rewards = [reward_cls.remote() for _ in range(s.reward_workers)]
        trainer: Any = trainer_cls.remote()   # an actor handle: Ray's types do not follow it
        summary: dict[str, Any] = ray.get(trainer.run.remote(cfg.model_dump(), rollouts, rewards))
        return summary
    finally:
        if started:
            ray.shutdown()
