"""Batched sampling with a Hugging Face causal LM and its KV cache.

The engine knows nothing about rewards or losses: prompts in; tokens, action mask, per-token
log-probs and stop reasons out; deterministic under a seed (one torch.Generator per call).

`logp` is always log pi_theta(token | prefix) of the unmodified policy (log-softmax of the raw
logits), taken from the very forward pass that sampled the token: at temperature 1 and top-p 1
it is also the sampling log-prob, so the trainer reuses it as log pi_theta_i with no second
forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from openk1.config import Section
from openk1.models.forward import cached_forward, encode_prompts, eval_mode
from openk1.rollout.repeat import RepeatConfig, RepeatDetector
from openk1.types import Rollout


class SamplingConfig(Section):
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 256   # sequences decoded together; bounds KV-cache memory
    repeat: RepeatConfig = RepeatConfig()   # stop a response that starts repeating itself


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One token per row from logits [B, V] with temperature (0 = greedy) and nucleus top-p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p       # keep the first over p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class HFEngine:
    """Rollout engine over an in-process HF model (CPU or one GPU)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig) -> None:
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling

    @torch.no_grad()
    def generate(self, prompts: list[str], samples_per_prompt: int, seed: int) -> Rollout:
        """k samples of each prompt, grouped: rows [i*k, (i+1)*k) belong to prompts[i]."""
        repeated = [p for p in prompts for _ in range(samples_per_prompt)]
        generator = torch.Generator().manual_seed(seed)
        size = self.sampling.batch_size
        with eval_mode(self.model):
            parts = [self._generate_batch(repeated[i:i + size], generator)
                     for i in range(0, len(repeated), size)]
        return concat_rollouts(parts, self.tokenizer.pad_token_id)

    def _generate_batch(self, prompts: list[str], generator: torch.Generator) -> Rollout:
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts)
        B, T = len(prompts), self.sampling.max_new_tokens
        tokens = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        logp = torch.zeros((B, T))
        action_mask = torch.zeros((B, T), dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        repeated = torch.zeros(B, dtype=torch.bool)
        detector = RepeatDetector.from_config(self.sampling.repeat, B) if self.sampling.repeat.enabled else None
        attention = prompt_mask
        logits, cache = cached_forward(self.model, prompt_ids, attention)   # logits [B, V]
        for t in range(T):
            token = sample_tokens(logits, self.sampling.temperature, self.sampling.top_p, generator)
            token = token.masked_fill(done, self.tokenizer.pad_token_id)
            tokens[:, t] = token
            logp[:, t] = torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1)
            action_mask[:, t] = (~done).long()
            eos = token == self.tokenizer.eos_token_id
            if detector is not None:
                repeated |= detector.update(token, active=~done & ~eos)
            done |= eos | repeated
            if bool(done.all()) or t == T - 1:
                break
            attention = torch.cat([attention, action_mask[:, t:t + 1]], dim=1)   # [B, P+t+1]
            logits, cache = cached_forward(self.model, token[:, None], attention, cache)
        logp = logp * action_mask
        stop = ["repeat" if r else "eos" if d else "max_tokens"
                for r, d in zip(repeated.tolist(), done.tolist())]
        return Rollout(prompt_ids, prompt_mask, tokens, action_mask, logp, stop,
                       texts=self._decode(tokens, action_mask))

    def _decode(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
                for row, m in zip(tokens, mask)]


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
    )
