"""A vLLM rollout engine, a RolloutEngine (rollout/engine.py) (one GPU; `pip install -e ".[vllm]"`).

    generate(prompts, k, seed) / sample(requests) -> Rollout   token ids, logp, action mask, stops
    load_weights(state) / load_versioned(state, version)        new policy, engine kept running
    sleep() / wake_up()                                         colocated (hybrid) mode, level 1 only
    exact_logp = False                                          recompute log pi_theta_i (below)

Written against vLLM V1's source, versions `SUPPORTED_VLLM` (pyproject's `vllm` extra; read at
0.11.0 and 0.34.0), and checked on CPU only, against a fake `vllm` module that records every call
(tests/rollout/test_vllm_fakes.py). `scripts/gpu_check_vllm.py` is the check on a real GPU
(docs/scaling.md "vLLM rollout engine"): what only it can tell is listed there.

Weights: in process, through a worker extension. The engine runs vLLM's engine core in this
process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set before the LLM is made, and the "uni" executor:
one GPU, no tensor parallelism), with `worker_extension_cls` = `WeightReceiver`, which vLLM mixes
into its worker class. `load_weights` calls `llm.collective_rpc("openk1_load_weights", ...)` by
method *name*: in process the call reaches the worker as a plain Python call (InprocClient ->
EngineCore -> UniProcExecutor -> run_method), so the tensors arrive as the same CPU tensors and the
model's own `load_weights` copies them into its parameters in place: no restart, no new KV cache,
CUDA graphs kept (same addresses). Why not the alternatives: a Python function sent through
`collective_rpc` goes through V1's msgpack serialiser when the engine core runs in another process,
which refuses functions (unless VLLM_ALLOW_INSECURE_SERIALIZATION=1) and turns tensors into lists;
CUDA IPC handles (verl, OpenRLHF) need the sender to hold a second GPU copy of the weights and to
map devices between processes, for no gain here: a rollout actor (stages/rl_ray.py) receives the
state dict on the CPU from Ray's object store anyway. The engine checks at start that vLLM's worker
runs in this process (`openk1_pid`), and the receiver refuses anything but tensors, so a
serialised push fails loudly instead of loading lists. Unquantised models only: the push does not
rerun vLLM's `process_weights_after_loading`. In process, vLLM seeds this process's global random
generators when it starts (harmless in a rollout actor: every request has its own seed), and the
environment variable stays set for the process.

Versions: `load_versioned(state, version)` refuses a version older than the one held
(WeightsVersionError); `load_weights(state)`, the Protocol's, loads the next version.

Sleep (colocated mode) is a state machine over vLLM's level-1 sleep (weights to CPU RAM, KV cache
freed) and `wake_up(tags)`:

    awake   --sleep()-->          asleep    llm.sleep(level=1)
    asleep  --wake_up()-->        awake     llm.wake_up()
    asleep  --load_weights()-->   weights   llm.wake_up(tags=["weights"]), then the push
    weights --wake_up()-->        awake     llm.wake_up(tags=["kv_cache"])
    weights --sleep()-->          asleep    llm.wake_up(tags=["kv_cache"]), llm.sleep(level=1)

`sample` refuses to run unless awake. "weights" is the half-awake state vLLM documents for weight
pushes: the weights are on the GPU, the KV cache is not allocated. It never calls `llm.sleep` or
`llm.wake_up()` half awake: vLLM 0.11's executor ignores a sleep while any tag sleeps (the weights
would stay on the GPU) and its allocator maps every allocation again on `wake_up()` (the weights
twice). Level 2 is refused (`VLLMSettings.sleep_level`): it discards the weights, which wake up as
garbage, so a push made awake is lost at the next level-2 sleep.

Log-probs: vLLM returns the sampled token's log-prob with `logprobs=0`; the engine is made with
`logprobs_mode="processed_logprobs"`: log softmax(z / T) of the tempered distribution sampled (at
T = 0, log softmax(z): vLLM 0.11's sampler divides greedy rows by 1), HFEngine's convention; after
top-p too, which RL refuses. They are computed in float32 from vLLM's forward in `vllm.dtype`
(bfloat16 by default), not the trainer's fp32 one, hence `exact_logp = False`: the RL stage is to
recompute log pi_theta_i with the trainer's forward (as verl does) for such an engine. A missing
log-prob (None, fewer than the tokens, the sampled token absent, not finite) raises
MissingLogprobError; it never becomes 0.

Stop reasons, as HFEngine's (rollout/hf.py), in its order of precedence at a token:
- "normal": an EOS or end-of-turn id (`stop_token_ids` = models/prompting.py `stop_ids`, vLLM
  adds the generation config's), or a stop string (`stop` = `sampling.stop`, matched on text with
  special tokens, `include_stop_str_in_output`; the token that completes it is kept). vLLM matches
  stop strings within the response only: one that starts in a continued prefix is found after the
  call, by HFEngine's rule, and the response cut there.
- "repeat": rollout/repeat.py's RepeatDetector (primed with the prefix, as HFEngine does) runs
  over the returned tokens after the call; the response and its log-probs are cut at the token
  where HFEngine would have stopped. vLLM generated past that point (the time is spent, the tokens
  are dropped).
- "max_tokens": the response, prefix included, reached `max_new_tokens` (also vLLM's
  `max_model_len`: the prompt filled the context).
- "budget": this call's budget (`max_tokens = min(room, budget)`) ran out first.

Random streams: request i is seeded by its (seed, sequence number) stream key and the length of its
prefix (`request_seed`): a sequence does not depend on the batch, and a continued partial rollout
does not replay its first segment's random numbers. The tokens differ from HFEngine's (another
sampler), not the distribution.

`sampling:` keys: temperature, top_p, max_new_tokens, stop and repeat as above; batch_size caps
vLLM's running sequences (`max_num_seqs`); lean and continuous_batching choose HFEngine's decoder
and are ignored (vLLM always batches continuously); any other key refuses the engine.

Images (a LLaVA folder, docs/vision.md): the tokenizer carries the model's processor (as
models/io.py load_model attaches it), so `prompt_tokens` expands `<image>` as for HFEngine. A
request with images goes to vLLM as `TokensPrompt(prompt_token_ids=..., multi_modal_data={"image":
[PIL RGB images, in order]})`, each distinct image (`ImageRef.digest`) read once per call and
shared by the k samples and the continued segments that show it. vLLM expands token prompts
itself: `BaseMultiModalProcessor._apply_hf_processor_main` (vllm/multimodal/processing.py, later
processing/processor.py) passes token ids through and reports the prompt updates as not applied,
so `_apply_prompt_updates` replaces the i-th `<image>` id by the image's feature tokens (llava.py
`_get_prompt_updates`: `[image_token_index] * get_num_image_tokens(...)`); ids already expanded
would be expanded again. So each image's run of `<image>` ids is sent as the one placeholder
(`collapse`, the inverse of models/vlm.py `expand`), and vLLM's own expansion, returned in
`RequestOutput.prompt_token_ids`, must equal the request's ids, or the call raises: the trainer
rescores the rollout on those ids. Only a prompt's image runs are collapsed; an `<image>` id
sampled in a continued prefix stays, and takes no features where vLLM places them by its
placeholder ranges (`is_multimodal`), not by id.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from openk1.config import Section
from openk1.data.images import ImageRef, image_token_id, load_image
from openk1.errors import OpenK1Error
from openk1.models import prompting
from openk1.models.io import PROCESSOR, model_dir
from openk1.models.prompting import PromptSettings
from openk1.models.vlm import require_processor, token_counts
from openk1.padding import pad
from openk1.rollout.engine import Request, requests_for
from openk1.rollout.hf import SamplingConfig
from openk1.rollout.repeat import RepeatConfig, RepeatDetector
from openk1.types import Rollout

SUPPORTED_VLLM = ((0, 11, 0), (0, 35, 0))   # >= first, < second: pyproject's vllm extra
PROCESSED_LOGPROBS_SINCE = (0, 10, 2)   # vLLM version with logprobs_mode="processed_logprobs" after temperature
RECEIVER = "openk1.rollout.vllm_engine.WeightReceiver"
SLEEP_LEVEL = 1
FINISH = {"stop": "normal", "length": "max_tokens"}
HONOURED = frozenset({"temperature", "top_p", "max_new_tokens", "batch_size", "repeat", "stop"})
IGNORED = frozenset({"lean", "continuous_batching"})   # HFEngine's decoder choices
State = Literal["awake", "asleep", "weights"]


class MissingLogprobError(RuntimeError):
    """vLLM returned a token without its log-prob."""


class WeightsVersionError(RuntimeError):
    """Weights older than the ones the engine holds."""


class EngineStateError(RuntimeError):
    """The engine was asked to sample while asleep, or vLLM does not run as this engine needs."""


def stream_seed(stream: tuple[int, int]) -> int:
    """A 31-bit per-request seed from a (seed, sequence number) stream key.

    >>> stream_seed((0, 0)) != stream_seed((0, 1))
    True
    """
    seed, index = stream
    return (seed * 1_000_003 + index * 7_919 + 12_345) % (2**31 - 1)


def request_seed(request: Request) -> int:
    """vLLM's seed for a request: its stream's, moved by the length of its prefix.

    >>> r = Request((1, 2), (3, 4))
    >>> request_seed(r) == stream_seed((3, 4)) != request_seed(Request((1, 2), (3, 4), prefix=(5,)))
    True
    """
    return (stream_seed(request.stream) + len(request.prefix) * 104_729) % (2**31 - 1)


def _version(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version string.

    >>> _version("0.10.2rc1"), _version("0.9.0+cu124"), _version("0.11")
    ((0, 10, 2), (0, 9, 0), (0, 11))
    """
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


def check_vllm_version(text: str) -> None:
    """Refuse a vLLM outside `SUPPORTED_VLLM`, the versions whose API this module calls.

    >>> check_vllm_version("0.11.0"), check_vllm_version("0.34.0+cu129")
    (None, None)
    """
    low, high = SUPPORTED_VLLM
    if not low <= _version(text) < high:
        wanted = f"vllm>={'.'.join(map(str, low))},<{'.'.join(map(str, high[:2]))}"
        raise EngineStateError(f"vLLM {text} is installed; openk1's vLLM engine needs {wanted} (worker "
                               "extension, wake_up(tags), processed log-probs, in-process engine core): "
                               "pip install -e \".[vllm]\"")


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


def check_sampling(sampling: SamplingConfig) -> None:
    """Refuse `sampling:` keys this engine neither honours nor may ignore (module doc), unless
    they keep their defaults."""
    fields = type(sampling).model_fields
    unknown = sorted(k for k in set(fields) - HONOURED - IGNORED if getattr(sampling, k) != fields[k].get_default())
    if unknown:
        raise ValueError(f"sampling key(s) {', '.join(unknown)} are not supported by the vLLM engine "
                         f"(it honours {', '.join(sorted(HONOURED))}; ignores {', '.join(sorted(IGNORED))})")


class VLLMSettings(Section):
    """`rl.vllm`, the engine's settings when `rl.ray.engine` is vllm (no vLLM import here)."""

    dtype: str = Field("bfloat16", description="vLLM's weight and activation dtype")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0,
                                          description="of the whole GPU: leave room for a colocated trainer")
    max_model_len: int = Field(4096, gt=0, description="prompt + response tokens vLLM plans for")
    enforce_eager: bool = Field(False, description="no CUDA graphs (less memory, slower decoding)")
    sleep_level: int = Field(1, ge=1, le=2,
                             description="vLLM's sleep level: 1 only (weights to CPU RAM, KV cache dropped); "
                             "2 discards the weights and is refused")

    @field_validator("sleep_level")
    @classmethod
    def _level_one(cls, level: int) -> int:
        if level != SLEEP_LEVEL:
            raise ValueError(f"sleep level {level} discards the weights, which wake up as garbage and lose every "
                             "weight push made while awake; use 1 (weights to CPU RAM)")
        return level


class WeightReceiver:
    """vLLM's `worker_extension_cls`: vLLM mixes these methods into its worker class, where
    `llm.collective_rpc(name, ...)` calls them (`self` is vLLM's worker). Names carry an openk1
    prefix: vLLM refuses an extension whose attribute names its worker class already has."""

    def openk1_load_weights(self, weights: list[tuple[str, torch.Tensor]], version: int) -> int:
        """Copy (HF name, tensor) pairs into the running model's parameters, in place."""
        for name, value in weights:
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"weight {name} arrived as {type(value).__name__}, not a tensor: the push went "
                                "through a serialiser (vLLM's engine core must run in the engine's process, "
                                "VLLM_ENABLE_V1_MULTIPROCESSING=0)")
        worker: Any = self
        worker.get_model().load_weights(weights=iter(weights))
        return version

    def openk1_pid(self) -> int:
        """The worker's process id (the engine checks it is its own)."""
        return os.getpid()


def sampled_logprobs(completion: Any, ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token in a vLLM CompletionOutput; raises if one is missing."""
    steps = completion.logprobs
    if steps is None or len(steps) != len(ids):
        got = "no log-probs" if steps is None else f"{len(steps)} log-prob positions"
        raise MissingLogprobError(f"vLLM returned {len(ids)} tokens and {got} (SamplingParams logprobs=0)")
    out = []
    for position, (step, token) in enumerate(zip(steps, ids)):
        entry = step.get(token) if step is not None else None
        value = None if entry is None else entry.logprob
        if value is None or not math.isfinite(value):
            raise MissingLogprobError(f"no finite log-prob for token {token} at response position {position} "
                                      f"(got {value!r})")
        out.append(float(value))
    return out


def completes_stop(tokenizer: Any, recent: list[int], token: int, stops: list[str]) -> bool:
    """HFEngine's stop-string rule: `token` completes a stop string that reaches into its text,
    `recent` being the tokens before it (as many as the longest stop string has characters)."""
    before = tokenizer.decode(recent, skip_special_tokens=False)
    after = tokenizer.decode(recent + [token], skip_special_tokens=False)
    return any(s in after[max(0, len(before) - len(s) + 1):] for s in stops)


def prefix_stop(tokenizer: Any, prefix: Sequence[int], ids: list[int], stops: list[str]) -> int | None:
    """First response index whose token completes a stop string begun in the prefix (vLLM only
    matches within the response); None if none does."""
    width = max(map(len, stops), default=0)
    if not width or not prefix:
        return None
    context = list(prefix[max(0, len(prefix) - width):])
    for j in range(min(width, len(ids))):
        if completes_stop(tokenizer, (context + ids[:j])[-width:], ids[j], stops):
            return j
    return None


def repeat_points(cfg: RepeatConfig, prefixes: list[tuple[int, ...]], responses: list[list[int]]) -> list[int | None]:
    """Per row, the response index after which HFEngine stops with "repeat" (None: never):
    RepeatDetector primed with the prefix, then fed the response one token at a time."""
    if not cfg.enabled or not responses:
        return [None] * len(responses)
    detector = RepeatDetector.from_config(cfg, len(responses))
    detector.prime([list(p) for p in prefixes])
    tokens, _ = pad(responses, -1, "right")                              # [B, T]
    lengths = torch.tensor([len(r) for r in responses], device="cpu")
    first = torch.full((len(responses),), -1, device="cpu")
    for t in range(tokens.shape[1]):
        fired = detector.update(tokens[:, t], active=(lengths > t) & (first < 0))
        first = torch.where(fired, t, first)
    return [None if f < 0 else int(f) for f in first.tolist()]


@dataclass
class _Output:
    tokens: list[int]
    logp: list[float]
    stop: str           # vLLM's, mapped: normal / max_tokens / budget
    by_id: bool         # vLLM stopped on an EOS or stop id (not a stop string, not the length)

    def cut(self, at: int, stop: str) -> None:
        """Keep tokens [0, at], ending with `stop`."""
        self.tokens, self.logp, self.stop = self.tokens[:at + 1], self.logp[:at + 1], stop


def collapse(ids: Sequence[int], image_id: int, counts: list[int]) -> list[int]:
    """`ids` with the i-th image's run of counts[i] `image_id`s (the first ones, in order) as one
    `image_id`, the placeholder vLLM expands (module doc); models/vlm.py `expand` undone. Later
    `image_id`s (sampled ones) stay.

    >>> collapse([1, 9, 9, 2, 9, 9, 9, 9], 9, [2, 3])
    [1, 9, 2, 9, 9]
    """
    out: list[int] = []
    at = 0
    for i, count in enumerate(counts):
        start = next((j for j in range(at, len(ids)) if ids[j] == image_id), len(ids))
        if list(ids[start:start + count]) != [image_id] * count:
            raise OpenK1Error(f"image {i}: no run of {count} image tokens (id {image_id}) after position {at}")
        out += [*ids[at:start], image_id]
        at = start + count
    return out + list(ids[at:])


def decoded_images(requests: list[Request]) -> dict[str, Any]:
    """digest -> decoded RGB image (PIL) of each distinct image of `requests`, each read once."""
    distinct: dict[str, ImageRef] = {ref.digest: ref for r in requests for ref in r.images}
    return {digest: load_image(ref) for digest, ref in distinct.items()}


def _load_tokenizer(path: Path, prompts: PromptSettings) -> Any:
    """The policy's tokenizer, prompt format and stop ids, as models/io.py load_model sets them;
    a VLM's tokenizer is its processor's, the processor attached (`processor_of`)."""
    from transformers import AutoTokenizer, GenerationConfig

    from openk1.models.vision import is_vision

    tokenizer = _processor_tokenizer(path) if is_vision(path) else AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        generation: Any = GenerationConfig.from_pretrained(str(path))
    except OSError:   # no generation_config.json
        generation = None
    prompting.record_eos_ids(tokenizer, SimpleNamespace(generation_config=generation))
    prompting.load_record(tokenizer, path)
    prompting.configure(tokenizer, prompts.prompt_format, prompts.system_prompt)
    return tokenizer


def _processor_tokenizer(path: Path) -> Any:
    """A VLM folder's processor's tokenizer, the processor on it (no model weights loaded here)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(path))
    tokenizer = processor.tokenizer
    setattr(tokenizer, PROCESSOR, processor)
    return tokenizer


class VLLMEngine:
    """Rollout engine over an in-process `vllm.LLM`, created once per run (module doc)."""

    exact_logp = False   # logp is vLLM's forward's: the RL stage recomputes log pi_theta_i

    def __init__(self, model_path: str, sampling: SamplingConfig, settings: VLLMSettings | None = None,
                 prompts: PromptSettings | None = None) -> None:
        import vllm

        check_vllm_version(vllm.__version__)
        check_sampling(sampling)
        self.settings = settings or VLLMSettings()
        if self.settings.sleep_level != SLEEP_LEVEL:   # settings made without validation
            raise ValueError(f"vllm.sleep_level {self.settings.sleep_level}: "
                             f"only level {SLEEP_LEVEL} keeps the weights")
        self.sampling = sampling
        path = model_dir(model_path)
        self.tokenizer = _load_tokenizer(path, prompts or PromptSettings())
        self.stop = prompting.stop_ids(self.tokenizer)   # vLLM adds the generation config's eos ids too
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # engine core in this process (module doc)
        self.llm: Any = vllm.LLM(model=str(path), **self._llm_args(vllm.__version__))
        self._check_in_process()
        self.state: State = "awake"
        self.version = 0
        self.forward_path = f"vllm {vllm.__version__} ({self.settings.dtype})"

    def _llm_args(self, version: str) -> dict[str, Any]:
        s = self.settings
        return {"dtype": s.dtype, "gpu_memory_utilization": s.gpu_memory_utilization,
                "max_model_len": s.max_model_len, "enforce_eager": s.enforce_eager, "enable_sleep_mode": True,
                "max_num_seqs": self.sampling.batch_size, "worker_extension_cls": RECEIVER,
                "distributed_executor_backend": "uni", "tensor_parallel_size": 1,
                **logprobs_mode_args(version, self.sampling.temperature)}

    def _check_in_process(self) -> None:
        pids = self.llm.collective_rpc("openk1_pid")
        if list(pids) != [os.getpid()]:
            raise EngineStateError(f"vLLM's worker runs in process(es) {pids}, not this one ({os.getpid()}): "
                                   "VLLM_ENABLE_V1_MULTIPROCESSING=0 must hold when the LLM is made (another "
                                   "vLLM engine made earlier in this process fixes vLLM's settings)")

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        """k samples of each prompt, grouped: row r belongs to prompts[r // k], stream (seed, r)."""
        return self.sample(requests_for(self.tokenizer, prompts, samples_per_prompt, seed))

    def _limit(self, request: Request) -> int:
        room = self.sampling.max_new_tokens - len(request.prefix)
        return room if request.budget is None else min(room, request.budget)

    def _params(self, request: Request) -> Any:
        from vllm import SamplingParams

        return SamplingParams(n=1, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                              max_tokens=self._limit(request), logprobs=0, seed=request_seed(request),
                              stop_token_ids=list(self.stop), stop=list(self.sampling.stop) or None,
                              include_stop_str_in_output=True, skip_special_tokens=False)

    def sample(self, requests: list[Request]) -> Rollout:
        """Row i answers requests[i]: its context (prompt_ids) is the prompt then the prefix, its
        response the tokens added by this call; a request's images go with it (module doc)."""
        if self.state != "awake":
            raise EngineStateError(f"the vLLM engine is {self.state}, not awake: call wake_up() before sampling")
        for r in requests:
            if self._limit(r) < 1:
                raise ValueError(f"nothing to sample: prefix {len(r.prefix)}, budget {r.budget}, "
                                 f"max_new_tokens {self.sampling.max_new_tokens}")
        pictures = decoded_images(requests)
        prompts = [self._prompt(r, pictures) for r in requests]
        results = self.llm.generate(prompts, [self._params(r) for r in requests], use_tqdm=False)
        if len(results) != len(requests):
            raise EngineStateError(f"vLLM answered {len(results)} of {len(requests)} requests")
        for row, (r, result) in enumerate(zip(requests, results)):
            self._check_expansion(row, r, result)
        outputs = [self._output(r, result.outputs[0]) for r, result in zip(requests, results)]
        self._hf_stops(requests, outputs)
        return self._rollout(requests, outputs)

    def _prompt(self, request: Request, pictures: dict[str, Any]) -> Any:
        """vLLM's TokensPrompt of a request: the prompt then the prefix; with images, each image's
        `<image>` run as one placeholder and the images (PIL, in order) as `multi_modal_data`."""
        from vllm.inputs import TokensPrompt

        ids = list(request.prompt_ids + request.prefix)
        if not request.images:
            return TokensPrompt(prompt_token_ids=ids)
        processor = require_processor(self.tokenizer)
        ids = collapse(ids, image_token_id(processor), token_counts(processor, request.images))
        return TokensPrompt(prompt_token_ids=ids,
                            multi_modal_data={"image": [pictures[ref.digest] for ref in request.images]})

    def _check_expansion(self, row: int, request: Request, result: Any) -> None:
        """vLLM's expansion of a request's images must give the request's ids (module doc)."""
        if not request.images:
            return
        expanded = [int(t) for t in result.prompt_token_ids]
        if expanded != list(request.prompt_ids + request.prefix):
            raise EngineStateError(f"row {row}: vLLM expanded the prompt's {len(request.images)} image(s) to "
                                   f"{len(expanded)} prompt tokens, the model's processor to "
                                   f"{len(request.prompt_ids) + len(request.prefix)}: they must agree")

    def _output(self, request: Request, completion: Any) -> _Output:
        """One completion's tokens, log-probs and mapped stop reason."""
        ids = [int(t) for t in completion.token_ids]
        logp = sampled_logprobs(completion, ids)
        reason = completion.finish_reason
        if reason not in FINISH or not ids:
            raise EngineStateError(f"vLLM finished a request with reason {reason!r} after {len(ids)} tokens")
        stop = FINISH[reason]
        limit = self._limit(request)
        if stop == "max_tokens" and request.budget is not None and limit == request.budget \
                and len(ids) >= limit and len(request.prefix) + len(ids) < self.sampling.max_new_tokens:
            stop = "budget"
        by_id = reason == "stop" and not isinstance(completion.stop_reason, str)
        return _Output(ids, logp, stop, by_id)

    def _hf_stops(self, requests: list[Request], outputs: list[_Output]) -> None:
        """Cut responses where HFEngine would have stopped first: a repeat, or a stop string begun
        in the prefix (module doc); precedence at one token: stop id > repeat > stop string."""
        repeats = repeat_points(self.sampling.repeat, [r.prefix for r in requests], [o.tokens for o in outputs])
        for request, out, repeat in zip(requests, outputs, repeats):
            string = prefix_stop(self.tokenizer, request.prefix, out.tokens, self.sampling.stop)
            end = len(out.tokens) - 1
            first = min(x for x in (end, repeat, string) if x is not None)
            if first == end and out.by_id:
                continue
            if first == repeat:
                out.cut(first, "repeat")
            elif first == string:
                out.cut(first, "normal")

    def _rollout(self, requests: list[Request], outputs: list[_Output]) -> Rollout:
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = pad([list(r.prompt_ids + r.prefix) for r in requests], pad_id, "left")
        response_ids, action_mask = pad([o.tokens for o in outputs], pad_id, "right")
        logp = torch.zeros(action_mask.shape, dtype=torch.float32, device="cpu")
        for row, o in enumerate(outputs):
            logp[row, :len(o.logp)] = torch.tensor(o.logp, dtype=torch.float32, device="cpu")
        texts = [self.tokenizer.decode(o.tokens, skip_special_tokens=True) for o in outputs]
        images = [r.images for r in requests] if any(r.images for r in requests) else None
        return Rollout(prompt_ids, prompt_mask, response_ids, action_mask, logp,
                       [o.stop for o in outputs], texts=texts, images=images)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """The next version's full state dict (HF parameter names), pushed into the running engine."""
        self.load_versioned(state, self.version + 1)

    def load_versioned(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Push `state` as policy `version`; refuses a version older than the one held. Asleep, only
        the weights wake (state "weights"): the KV cache stays freed until `wake_up`."""
        if version < self.version:
            raise WeightsVersionError(f"weights of version {version} offered, version {self.version} held")
        if self.state == "asleep":
            self.llm.wake_up(tags=["weights"])
            self.state = "weights"
        self.llm.collective_rpc("openk1_load_weights", args=(list(state.items()), version))
        if self.state == "awake":
            self.llm.reset_prefix_cache()   # cached KV blocks belong to the old weights (sleep clears them)
        self.version = version

    def sleep(self) -> None:
        """Weights to CPU RAM, KV cache freed (vLLM sleep level 1); from "weights", the KV cache
        wakes first (module doc: vLLM is never put to sleep half awake)."""
        if self.state == "asleep":
            return
        if self.state == "weights":
            self.llm.wake_up(tags=["kv_cache"])
            self.state = "awake"
        self.llm.sleep(level=SLEEP_LEVEL)
        self.state = "asleep"

    def wake_up(self) -> None:
        """Weights and KV cache back on the GPU (only the KV cache from "weights")."""
        if self.state == "asleep":
            self.llm.wake_up()
        elif self.state == "weights":
            self.llm.wake_up(tags=["kv_cache"])
        self.state = "awake"

    def close(self) -> None:
        """Nothing to do: vLLM's engine ends with this process (a rollout actor's)."""
