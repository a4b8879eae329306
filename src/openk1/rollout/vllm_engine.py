"""A vLLM rollout engine, a RolloutEngine (rollout/engine.py) (GPU; `pip install openk1[vllm]`).

    generate(prompts, k, seed) / sample(requests) -> Rollout   token ids, logp, action mask, stops
    load_weights(state_dict)                                    new policy, engine kept running
    sleep() / wake_up()                                         colocated (hybrid) mode
    close()                                                     nothing: the process frees vLLM

NOT RUN HERE: this module was written without a GPU and without vLLM installed; the CPU test
suite only checks that it is skipped cleanly. `scripts/gpu_smoke.sh MODEL_DIR` is the check a
user with one GPU runs (docs/scaling.md "vLLM rollout engine").

Choices, against the HF engine's conventions (rollout/hf.py):
- logp: vLLM returns the sampled token's log-prob with `logprobs=0`. It must be HFEngine's, log
  softmax(z / T) of the tempered distribution sampled (the update computes log pi_theta at the
  same T). vLLM's V1 default (`logprobs_mode="raw_logprobs"`) is log softmax(z), before
  temperature: the engine is created with `logprobs_mode="processed_logprobs"` (after
  temperature; also after top-p, which RL refuses), an engine argument of vLLM >= 0.10.2 (as TRL
  does; 0.10.0-0.10.1 had the setting, but "processed" left out temperature there). Older vLLM
  is refused at temperature != 1; at temperature 1 and top-p 1 raw and processed agree.
- Random streams: every request carries its own seed derived from its (seed, sequence number)
  stream key, so a sequence does not depend on the batch; the tokens differ from HFEngine's
  (another sampler), not the distribution.
- Stop reasons: vLLM's "stop" -> "normal", "length" -> "max_tokens" (or "budget" when this
  call's budget was the limit). Repeat detection is HFEngine's alone (no "repeat" here).
- Weights: `llm.collective_rpc` runs `model.load_weights` in every worker (tensor parallel
  included): the engine is never restarted. Sleep level 1 moves weights to CPU RAM and drops the
  KV cache; wake_up restores them before the next weights arrive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from openk1.config import Section
from openk1.models import prompting
from openk1.models.prompting import PromptSettings
from openk1.padding import pad
from openk1.rollout.engine import Request, requests_for
from openk1.rollout.hf import SamplingConfig
from openk1.types import Rollout

PROCESSED_LOGPROBS_SINCE = (0, 10, 2)   # vLLM version with logprobs_mode="processed_logprobs" after temperature
FINISH = {"stop": "normal", "length": "max_tokens", "abort": "max_tokens"}


def stream_seed(stream: tuple[int, int]) -> int:
    """A 31-bit per-request seed from a (seed, sequence number) stream key.

    >>> stream_seed((0, 0)) != stream_seed((0, 1))
    True
    """
    seed, index = stream
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**31 - 1)


def _version(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version string.

    >>> _version("0.10.2rc1"), _version("0.9.0+cu124"), _version("0.11")
    ((0, 10, 2), (0, 9, 0), (0, 11))
    """
    import re

    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


def logprobs_mode_args(vllm_version: str, temperature: float) -> dict[str, str]:
    """LLM(...) keyword arguments that make the returned log-probs those of softmax(z / T).

    >>> logprobs_mode_args("0.10.2", 0.7)
    {'logprobs_mode': 'processed_logprobs'}
    >>> logprobs_mode_args("0.9.2", 1.0)
    {}
    """
    if _version(vllm_version) >= PROCESSED_LOGPROBS_SINCE:
        return {"logprobs_mode": "processed_logprobs"}
    if temperature != 1.0:
        raise RuntimeError(f"vLLM {vllm_version} returns the log-probs of the raw logits, not those of "
                           f"the tempered distribution sampled at temperature {temperature}: use "
                           "vLLM >= 0.10.2 (logprobs_mode processed_logprobs) or temperature 1")
    return {}


class VLLMSettings(Section):
    """`rl.vllm`, the engine's settings when `rl.ray.engine` is vllm (no vLLM import here)."""

    dtype: str = Field("bfloat16", description="vLLM's weight and activation dtype")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0,
                                          description="of the whole GPU: leave room for a colocated trainer")
    max_model_len: int = Field(4096, gt=0, description="prompt + response tokens vLLM plans for")
    enforce_eager: bool = Field(False, description="no CUDA graphs (less memory, slower decoding)")
    sleep_level: int = Field(1, ge=1, le=2,
                             description="vLLM's sleep levels: 1 (weights to CPU RAM, KV cache dropped) or 2")


def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker process (collective_rpc)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """Rollout engine over `vllm.LLM`, created once per run (sleep-mode enabled)."""

    def __init__(self, model_path: str, sampling: SamplingConfig, settings: VLLMSettings | None = None,
                 prompts: PromptSettings | None = None) -> None:
        import vllm
        from vllm import LLM

        self.settings = settings or VLLMSettings()
        self.sampling = sampling
        self.llm = LLM(model=model_path, dtype=self.settings.dtype,
                       gpu_memory_utilization=self.settings.gpu_memory_utilization,
                       max_model_len=self.settings.max_model_len,
                       enforce_eager=self.settings.enforce_eager, enable_sleep_mode=True,
                       **logprobs_mode_args(vllm.__version__, sampling.temperature))
        self.tokenizer = self.llm.get_tokenizer()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the policy's prompt format and stop ids, as models/io.py load_model sets them
        prompting.load_record(self.tokenizer, Path(model_path))
        prompts = prompts or PromptSettings()
        prompting.configure(self.tokenizer, prompts.prompt_format, prompts.system_prompt)
        self.stop = prompting.stop_ids(self.tokenizer)   # + generation_config's, which vLLM adds
        self.asleep = False
        self.forward_path = f"vllm {vllm.__version__} ({self.settings.dtype})"

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        """k samples of each prompt, grouped: row r belongs to prompts[r // k], stream (seed, r)."""
        return self.sample(requests_for(self.tokenizer, prompts, samples_per_prompt, seed))

    def _limit(self, request: Request) -> int:
        room = self.sampling.max_new_tokens - len(request.prefix)
        return room if request.budget is None else min(room, request.budget)

    def sample(self, requests: list[Request]) -> Rollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=1, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                 max_tokens=self._limit(r), logprobs=0, seed=stream_seed(r.stream),
                                 stop_token_ids=self.stop)
                  for r in requests]
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids + r.prefix)) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        tokens, logps, stops = [], [], []
        for request, out in zip(requests, outputs):
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            tokens.append(ids)
            logps.append([step[token].logprob for step, token in zip(completion.logprobs or [], ids)])
            stop = FINISH.get(completion.finish_reason or "length", "max_tokens")
            if stop == "max_tokens" and request.budget is not None and self._limit(request) == request.budget \
                    and len(request.prefix) + len(ids) < self.sampling.max_new_tokens:
                stop = "budget"
            stops.append(stop)
        return self._rollout(requests, tokens, logps, stops)

    def _rollout(self, requests: list[Request], tokens: list[list[int]], logps: list[list[float]],
                 stops: list[str]) -> Rollout:
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = pad([list(r.prompt_ids + r.prefix) for r in requests], pad_id, "left")
        response_ids, action_mask = pad(tokens, pad_id, "right")
        logp = torch.zeros(action_mask.shape)
        for row, values in enumerate(logps):
            logp[row, :len(values)] = torch.tensor(values, dtype=torch.float32)
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        return Rollout(prompt_ids, prompt_mask, response_ids, action_mask, logp, stops, texts=texts)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Push a full state dict (HF parameter names) into the running engine."""
        self.llm.collective_rpc(_load_weights, args=(list(state.items()),))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()       # cached KV blocks belong to the old weights

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=self.settings.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Nothing to do: vLLM's workers end with this process (a rollout actor's)."""
