"""Sampling with a Hugging Face causal LM and its KV cache, with continuous batching.

The engine knows nothing about rewards or losses: requests in (prompt tokens, optionally a
prefix of earlier response tokens, a random-stream key, a token budget); tokens, action mask,
per-token log-probs and stop reasons out.

`logp` is log pi_T(token | context) of the tempered distribution sampled, pi_T = softmax(z / T)
(z the raw logits, T `sampling.temperature`), taken from the very forward pass that sampled the
token: the trainer reuses it as log pi_theta_i with no second forward pass and computes log
pi_theta at the same T (models/forward.py response_logprobs; as verl and TRL do). Two cases are
not the sampling log-prob: temperature 0 (greedy) records log softmax(z), the T = 1 policy's;
top-p < 1 records the tempered distribution's before the nucleus cut (the truncated one is not a
smooth function of z the trainer can reproduce; RL refuses top_p < 1, eval uses no log-probs).

Determinism: token t of a response is drawn by inverse-CDF sampling at the uniform
counter_uniform(seed, sequence number, t) (rollout/streams.py). A sequence's tokens depend on
its own key, position and logits only: not on the other sequences, its slot, `batch_size`, or
whether it was sampled in one call or continued from a prefix in a later one (partial rollouts).

Stop reasons: "normal" (EOS; the EOS is kept and trained), "repeat" (rollout/repeat.py),
"max_tokens" (the response, prefix included, reached `max_new_tokens`), "budget" (this call's
budget ran out first: a partial rollout, continued later by rollout/partial.py).

Continuous batching: at most `batch_size` sequences decode together. A finished sequence leaves
the batch at once; when a quarter of the slots (or every waiting sequence) can be filled, the
waiting sequences are prefilled together and their KV-cache rows joined to the running ones
(rollout/kv_cache.py). With `continuous_batching: false` the next batch starts only when the
whole previous one has finished (the plain batched loop).

Vision-language models (models/vlm.py): the lean decoder is text only, so a VLM decodes on
HFCacheState, prefilling with input embeddings in which each row's prompt image tokens carry its
images' features; decode steps feed token ids as for a text model. Features are computed once per
distinct image (one vision-tower call per prefill that meets new images) and kept in the engine's
FeatureCache while the vision weights are unchanged. Text requests join the same batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field

from openk1.algo.logprobs import token_logprobs
from openk1.config import Section
from openk1.data.images import ImageRef
from openk1.errors import OpenK1Error
from openk1.models import lean_compiled
from openk1.models.forward import cached_forward, eval_mode, forward_path, is_vlm, learned_positions
from openk1.models.lean import LeanModel
from openk1.models.prompting import stop_ids
from openk1.models.vlm import FeatureCache, require_processor, scatter
from openk1.padding import pad
from openk1.rollout import kv_cache
from openk1.rollout.engine import Request, requests_for
from openk1.rollout.repeat import RepeatConfig, RepeatDetector
from openk1.rollout.streams import fold, uniform_at
from openk1.types import Rollout

REFILL_FRACTION = 4     # refill once batch_size / 4 slots are free: one prefill per few finished rows


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(64, gt=0, description="response tokens, a continued prefix included")
    batch_size: int = Field(256, gt=0, description="sequences decoded together; bounds KV-cache memory")
    continuous_batching: bool = Field(True, description="finished sequences free their slots for waiting ones")
    repeat: RepeatConfig = Field(RepeatConfig(), description="stop a response that starts repeating itself")
    lean: bool = Field(True, description="static KV cache + openk1's Llama-family forward (models/lean.py)")
    stop: list[str] = Field(default_factory=list, description="stop strings: a response ends (stop reason normal) "
                            "with the token that completes one; ids: every EOS and end-of-turn id always stop")


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [B, V] (temperature 0 = greedy, nucleus top-p).

    Inverse CDF: the first token whose cumulative probability exceeds uniforms [B] x the kept
    mass; float64 so that a token of probability 0 (outside the nucleus) is never picked.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)              # [B, V]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p       # keep the first over p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)                                                     # [B, V]
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]                           # [B, 1]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@dataclass
class _Output:
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    stop: str = ""
    context: list[int] = field(default_factory=list)   # the end of the request's prefix (stop strings)


@dataclass
class _Rows:
    """Bookkeeping of the sequences decoding together, one row each, in the decode state's row
    order; rows leave and join between steps."""

    index: torch.Tensor       # [b] request index
    stream: torch.Tensor      # [b] hash state of the random-stream key (seed, sequence number)
    position: torch.Tensor    # [b] response position of the next token (prefix included)
    left: torch.Tensor        # [b] tokens this call may still add
    end: torch.Tensor         # [b] response length at which it stops for max_tokens
    token: torch.Tensor       # [b] next token, drawn as soon as its logits exist (device of the model)
    logp: torch.Tensor        # [b] its log-prob (see the module docstring)
    detector: RepeatDetector | None

    def take(self, order: torch.Tensor) -> _Rows:
        """Rows `order` [n] (old row indices), in that order."""
        return _Rows(self.index[order], self.stream[order], self.position[order], self.left[order],
                     self.end[order], self.token[order], self.logp[order],
                     self.detector.select(order) if self.detector is not None else None)

    def join(self, other: _Rows) -> _Rows:
        """These rows, then `other`'s."""
        detector = (self.detector.join(other.detector)
                    if self.detector is not None and other.detector is not None else None)
        return _Rows(torch.cat([self.index, other.index]), torch.cat([self.stream, other.stream]),
                     torch.cat([self.position, other.position]), torch.cat([self.left, other.left]),
                     torch.cat([self.end, other.end]), torch.cat([self.token, other.token]),
                     torch.cat([self.logp, other.logp]), detector)


class HFCacheState:
    """Decode state over HF's own forward and DynamicCache (any causal LM): rows left-padded to a
    common length, the attention mask [b, L] marking real tokens (rollout/kv_cache.py).

    A model whose cache cannot drop or join rows (not a full-attention DynamicCache, e.g. a
    recurrent-state hybrid) decodes in whole batches: a finished row stays in the cache, fed
    padding its attention mask hides, until the batch ends (`joins` False, `note` says why)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache: Any = None          # HF's DynamicCache of the rows; None: no rows
        self.attention: Any = None      # [b, L] 1 on real tokens; None: no rows
        self.live: Any = None           # [n] cache rows still decoding (whole-batch mode only)
        self.joins = True               # rows can be dropped and joined (kv_cache.supports_surgery)
        self.note = ""                  # why not, once found

    def extend(self, contexts: list[list[int]], pad_id: int,
               features: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Prefill new rows after the existing ones -> their next-token logits [n, V]. A VLM's
        rows come with `features` (each row's images', or None): the prefill's input embeddings
        carry them (models/vlm.py scatter)."""
        ids, mask = (x.to(self.device) for x in pad(contexts, pad_id, "left"))
        embeds = scatter(self.model, ids, features) if features is not None else None
        logits, cache = cached_forward(self.model, ids, mask, inputs_embeds=embeds)   # [n, V]
        if not kv_cache.supports_surgery(cache):
            self.joins, self.live = False, torch.arange(len(contexts), device="cpu")
            self.note = f"{type(cache).__name__} cannot drop or join rows: whole batches"
        if self.cache is None:
            self.cache, self.attention = cache, mask
        else:
            width = max(self.attention.shape[1], mask.shape[1])
            self.attention = torch.cat([kv_cache.left_pad(m, width, 1) for m in (self.attention, mask)])
            self.cache = kv_cache.join(self.cache, cache)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens [b] -> next-token logits [b, V]."""
        if not self.joins:
            return self._step_whole(tokens)
        attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=1)
        logits, self.cache = cached_forward(self.model, tokens[:, None], attention, self.cache)
        first = int(attention.any(0).long().argmax())   # leading columns that are padding in every row
        self.attention = attention[:, first:]
        kv_cache.drop_left(self.cache, first)
        return logits

    def _step_whole(self, tokens: torch.Tensor) -> torch.Tensor:
        """`step` without row surgery: every cache row takes a token, finished ones padding
        with attention 0 (hidden from every later token); the live rows' logits [b, V]."""
        rows = self.attention.shape[0]
        live = self.live.to(tokens.device)
        full = tokens.new_zeros(rows).index_copy(0, live, tokens)                # [R]
        column = self.attention.new_zeros(rows, 1).index_fill(0, live, 1)        # [R, 1]
        self.attention = torch.cat([self.attention, column], dim=1)
        logits, self.cache = cached_forward(self.model, full[:, None], self.attention, self.cache)
        return logits[live]

    def keep(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep rows where keep [b] is True -> order [n] (old row indices, ascending)."""
        order = keep.nonzero().squeeze(-1)
        if not keep.any():
            self.cache, self.attention, self.live = None, None, None
            self.joins = True   # the next batch's cache is checked again
        elif not self.joins:
            self.live = self.live[order]
        elif not keep.all():
            kv_cache.select(self.cache, order)
            self.attention = self.attention[order]
        return order


class HFEngine:
    """Rollout engine over an in-process HF model (CPU or one GPU); a RolloutEngine
    (rollout/engine.py).

    Decoding runs on models/lean.py's static-cache decoder when the model is Llama-family
    (`sampling.lean`, the default), else on HF's forward and DynamicCache (HFCacheState): the same
    tokens either way (the forward passes agree to fp32 rounding). `dtype` (default: the model's)
    is the decoder's compute dtype: bfloat16 packs bf16 weights and KV cache for this call.
    `compile`: the lean decoder's step through torch.compile with the sampling fused in
    (models/lean_compiled.py; top_p 1; else the eager step).
    `sleep`, `wake_up` and `close` do nothing: the model is the caller's module, and the KV cache
    lives for one `sample` call only.
    """

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig,
                 dtype: torch.dtype | None = None, compile: bool = False) -> None:
        self.model, self.tokenizer, self.sampling, self.dtype = model, tokenizer, sampling, dtype
        self.compile = compile
        self.progress: Callable[[int], Any] | None = None   # called with each step's finished rows
        # which decoder runs and why (lean static cache, or HF's forward + DynamicCache); a cache
        # without row surgery adds why it decodes in whole batches (HFCacheState.note)
        self.forward_path = forward_path(model, sampling.lean)
        self.vision = is_vlm(model)   # image features as prompt embeddings on HF's forward (models/vlm.py)
        self.features = FeatureCache()
        self.stop = torch.tensor(stop_ids(tokenizer), device="cpu")   # models/prompting.py
        self.positions = learned_positions(model)       # GPT-2: responses end before they run out

    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        """k samples of each prompt, grouped: row r belongs to prompts[r // k], stream (seed, r)
        (prompts with images: `sample(requests_for(..., images=...))`)."""
        return self.sample(requests_for(self.tokenizer, prompts, samples_per_prompt, seed))

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a full state dict into the model (in-process RL shares the trainer's module and
        never calls this; a Ray rollout worker does); cached image features are dropped."""
        self.model.load_state_dict(state)
        self.features.clear()

    def sleep(self) -> None:
        """Nothing to release: the model is the caller's, the KV cache one call's."""

    def wake_up(self) -> None:
        """Nothing to take back (see `sleep`)."""

    def close(self) -> None:
        """Nothing held beyond the caller's model."""

    @torch.no_grad()
    def sample(self, requests: list[Request]) -> Rollout:
        """Row i answers requests[i]: its context (prompt_ids) is the prompt then the prefix, its
        response the tokens added by this call."""
        for r in requests:
            if self.positions and len(r.prompt_ids) + len(r.prefix) >= self.positions:
                raise OpenK1Error(f"a prompt of {len(r.prompt_ids)} tokens (+ {len(r.prefix)} already sampled) "
                                  f"leaves no room in the model's {self.positions} learned positions")
            if self._limit(r) < 1:
                raise ValueError(f"nothing to sample: prefix {len(r.prefix)}, budget {r.budget}, "
                                 f"max_new_tokens {self.sampling.max_new_tokens}")
        self._check_images(requests)
        width = max(map(len, self.sampling.stop), default=0)   # stop strings look back this far
        outputs = [_Output(context=list(r.prefix[max(0, len(r.prefix) - width):]) if width else []) for r in requests]
        waiting = deque(range(len(requests)))
        rows: _Rows | None = None
        with eval_mode(self.model):
            state = self._state(requests)
            if self.vision:
                self.features.begin(self.model)
            while waiting or rows is not None:
                rows = self._admit(rows, waiting, requests, state)
                rows = self._step(rows, outputs, state)
            self.features.end()
        if getattr(state, "note", "") and state.note not in self.forward_path:
            self.forward_path += f"; {state.note}"
        return self._rollout(requests, outputs)

    def _check_images(self, requests: list[Request]) -> None:
        """Requests with images need a VLM and its processor (on the tokenizer)."""
        if not any(r.images for r in requests):
            return
        if not self.vision:
            raise OpenK1Error("requests with images need a vision-language model; this one is text only "
                              f"({type(self.model).__name__})")
        require_processor(self.tokenizer)

    def _state(self, requests: list[Request]) -> Any:
        """The decode state for this call: a lean static-cache decoder sized for these requests
        (with `compile`, its compiled step that also draws the tokens: models/lean_compiled.py),
        or HF's DynamicCache (always for a VLM)."""
        lean = LeanModel.of(self.model, self.dtype) if self.sampling.lean and not self.vision else None
        if lean is None:
            return HFCacheState(self.model)
        length = max(len(r.prompt_ids) + len(r.prefix) + self._limit(r) for r in requests)
        slots = min(self.sampling.batch_size, len(requests))
        if self.compile and lean_compiled.unsupported_reason(lean, self.sampling.top_p) is None:
            return lean_compiled.CompiledDecoder(lean, slots, length, self.sampling.temperature)
        return lean.decoder(slots, length)

    def _end(self, request: Request) -> int:
        """The response length at which `request` stops for max_tokens: max_new_tokens, or
        fewer where a model with learned positions (GPT-2) runs out of them."""
        if not self.positions:
            return self.sampling.max_new_tokens
        return min(self.sampling.max_new_tokens, self.positions - len(request.prompt_ids))

    def _limit(self, request: Request) -> int:
        room = self._end(request) - len(request.prefix)
        return room if request.budget is None else min(room, request.budget)

    def _admit(self, rows: _Rows | None, waiting: deque[int], requests: list[Request], state: Any) -> _Rows:
        """Prefill waiting sequences into free slots when the batching rule says so."""
        running = 0 if rows is None else len(rows.index)
        count = min(self.sampling.batch_size - running, len(waiting))
        worth_it = count >= min(max(1, self.sampling.batch_size // REFILL_FRACTION), len(waiting))
        joins = getattr(state, "joins", True)   # HFCacheState of a cache without row surgery: False
        if rows is not None and not (self.sampling.continuous_batching and joins and count and worth_it):
            return rows
        new = self._prefill([waiting.popleft() for _ in range(count)], requests, state)
        return new if rows is None else rows.join(new)

    def _prefill(self, index: list[int], requests: list[Request], state: Any) -> _Rows:
        chosen = [requests[i] for i in index]
        contexts = [list(r.prompt_ids + r.prefix) for r in chosen]
        if self.vision:   # each row's image features, encoded once per distinct image (models/vlm.py)
            processor = require_processor(self.tokenizer) if any(r.images for r in chosen) else None
            features = self.features.rows(self.model, processor, [r.images for r in chosen])
            logits = state.extend(contexts, self.tokenizer.pad_token_id, features)
        else:
            logits = state.extend(contexts, self.tokenizer.pad_token_id)
        detector = None
        if self.sampling.repeat.enabled:
            detector = RepeatDetector.from_config(self.sampling.repeat, len(chosen))
            detector.prime([list(r.prefix) for r in chosen])
        def cpu(values: list[int]) -> torch.Tensor:   # the rows' bookkeeping stays on the CPU
            return torch.tensor(values, device="cpu")

        keys = torch.tensor([r.stream for r in chosen], device="cpu")        # [n, 2]
        stream, position = fold(keys[:, 0], keys[:, 1]), cpu([len(r.prefix) for r in chosen])
        return _Rows(cpu(index), stream, position, cpu([self._limit(r) for r in chosen]),
                     cpu([self._end(r) for r in chosen]), *self._draw(logits, stream, position), detector)

    def _draw(self, logits: torch.Tensor, stream: torch.Tensor,
              position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row from its logits [b, V], and its log-prob [b]."""
        uniforms = uniform_at(stream, position)                      # = counter_uniform(seed, seq, t)
        temperature = self.sampling.temperature
        token = sample_tokens(logits, temperature, self.sampling.top_p, uniforms)
        # log softmax(z / T)[token]: the trainer's arithmetic (token_logprobs); greedy: T = 1
        logp = token_logprobs(logits[:, None], token[:, None],
                              temperature=temperature if temperature > 0 else 1.0)[:, 0]   # [b]
        return token, logp

    def _step(self, rows: _Rows, outputs: list[_Output], state: Any) -> _Rows | None:
        """Record each row's drawn token, drop finished rows, run the next forward pass and draw
        the next tokens (in the compiled step itself: models/lean_compiled.py)."""
        token, logp = rows.token, rows.logp
        chosen = token.cpu()                    # [b] bookkeeping (stops, repeats, outputs) on the CPU
        stops = self._stops(rows, chosen)
        if self.sampling.stop:
            stops = self._stop_strings(rows, chosen, stops, outputs)
        if self.progress is not None:
            self.progress(sum(map(bool, stops)))
        for i, t, lp, stop in zip(rows.index.tolist(), chosen.tolist(), logp.tolist(), stops):
            outputs[i].tokens.append(t)
            outputs[i].logp.append(lp)
            outputs[i].stop = stop
        rows.position, rows.left = rows.position + 1, rows.left - 1
        order = state.keep(torch.tensor([not s for s in stops], device="cpu"))   # [n] old rows (CPU)
        if not len(order):
            return None
        running = rows.take(order)
        if isinstance(state, lean_compiled.CompiledDecoder):
            running.token, running.logp = state.step_sample(token[order], uniform_at(running.stream, running.position))
        else:
            running.token, running.logp = self._draw(state.step(token[order]), running.stream, running.position)
        return running

    def _stops(self, rows: _Rows, token: torch.Tensor) -> list[str]:
        """Stop reason of each row after `token` [b] ("" = keeps going), in order of precedence."""
        eos = torch.isin(token, self.stop)   # EOS, end of turn, generation_config's eos ids
        repeated = rows.detector.update(token) if rows.detector is not None else torch.zeros_like(eos)
        at_max = rows.position + 1 >= rows.end
        at_budget = rows.left <= 1
        return ["normal" if e else "repeat" if r else "max_tokens" if m else "budget" if b else ""
                for e, r, m, b in zip(eos.tolist(), repeated.tolist(), at_max.tolist(), at_budget.tolist())]

    def _stop_strings(self, rows: _Rows, token: torch.Tensor, stops: list[str], outputs: list[_Output]) -> list[str]:
        """"normal" for a running row in which `token` completes a stop string: an occurrence
        that reaches into the token's text (the row's last tokens decoded: a token is at least one
        character, so as many tokens as the longest stop string has characters hold it)."""
        width = max(map(len, self.sampling.stop))
        out = list(stops)
        for j, (i, t) in enumerate(zip(rows.index.tolist(), token.tolist())):
            if out[j] in ("normal", "repeat"):
                continue
            recent = (outputs[i].context + outputs[i].tokens)[-width:]   # a partial rollout's prefix too
            before = self.tokenizer.decode(recent, skip_special_tokens=False)
            after = self.tokenizer.decode(recent + [t], skip_special_tokens=False)
            if any(s in after[max(0, len(before) - len(s) + 1):] for s in self.sampling.stop):
                out[j] = "normal"
        return out

    def _rollout(self, requests: list[Request], outputs: list[_Output]) -> Rollout:
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = pad([list(r.prompt_ids + r.prefix) for r in requests], pad_id, "left")
        response_ids, action_mask = pad([o.tokens for o in outputs], pad_id, "right")
        logp = torch.zeros(action_mask.shape, device="cpu")
        for row, o in enumerate(outputs):
            logp[row, :len(o.logp)] = torch.tensor(o.logp, device="cpu")
        texts = [self.tokenizer.decode(o.tokens, skip_special_tokens=True) for o in outputs]
        images = [r.images for r in requests] if any(r.images for r in requests) else None
        return Rollout(prompt_ids, prompt_mask, response_ids, action_mask, logp,
                       [o.stop for o in outputs], texts=texts, images=images)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts along B, re-padding prompts on the left and responses on the right."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.response_ids.shape[1] for p in parts)

    def left(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (P - x.shape[1], 0), value=value)

    def right(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
        response_ids=torch.cat([right(p.response_ids, pad_id) for p in parts]),
        action_mask=torch.cat([right(p.action_mask, 0) for p in parts]),
        logp=torch.cat([right(p.logp, 0.0) for p in parts]),
        stop_reason=[s for p in parts for s in p.stop_reason],
        texts=[t for p in parts for t in p.texts],
        images=_images(parts),
    )


def _images(parts: list[Rollout]) -> list[tuple[ImageRef, ...]] | None:
    """The parts' per-row images, () for the rows of a text part; None when no part has any."""
    if all(p.images is None for p in parts):
        return None
    return [i for p in parts for i in (p.images or [()] * p.response_ids.shape[0])]
