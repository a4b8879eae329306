"""The lean decoder's per-token step through torch.compile, with the sampling fused in.

`CompiledDecoder` is models/lean.py's `Decoder` (same static KV cache, same eager prefill
`extend` and compaction `keep`) whose `step_sample(tokens, uniforms)` appends one token to every
row and returns the NEXT token of each row and its log-prob, drawn inside the compiled code:

    layer (x L)   rms_norm -> q/k/v (one matmul) -> RoPE -> K/V written into the cache in place
                  -> attention over the cache -> o -> rms_norm -> SwiGLU (LeanModel._layer, traced)
    head          rms_norm -> LM head -> logits z [B, V] (fp32)
    sampling      inverse CDF of softmax(z / T) in float64 at the engine's uniform [B]
                  (rollout/hf.py sample_tokens); logp = log softmax(z / T)[token] in fp32
                  (algo/logprobs.py token_logprobs); T = 0: argmax, logp at T = 1

Shapes. On a CPU the rows, the attended width (longest row + 1) and the cache's slots and
length are dynamic dimensions (torch._dynamo.mark_dynamic): one layer graph (it serves every
layer) and one head graph per process, whatever the batch does, and no padding rows. On CUDA,
where mode="reduce-overhead" replays CUDA graphs (static shapes), shapes are bucketed: the cache
holds `bucket(slots)` rows of `bucket(length)` columns (powers of two), a step runs on
`rows_bucket(b)` rows (a power of two >= the cache's rows / 2^ROW_BUCKETS: at most
ROW_BUCKETS + 1 row buckets) over a power-of-two width, so each graph compiles (and records) once
per bucket; padding rows (free slots of the cache, which the next prefill overwrites) are dropped
from the outputs; weights and cache are marked static addresses, so no replay copies them (a new
rollout call's new buffers make each graph re-record once). Measured on one CPU core (the demo's
rollout, benchmarks/compiled_decode.py): dynamic shapes 1.26-1.49x the eager decoder's speed with
2 graphs; CUDA's buckets on the CPU 0.88x with 8 graphs (padding rows cost as much as real ones).

Per step, nothing the size of the cache or of the weights is allocated or copied: K/V are
written into the cache in place (inductor re-inplaces the graph's index_put_ on its input), the
step's tokens, positions and uniforms go into buffers allocated once per decoder; what a step
does allocate is small ([rows, width] mask, rotations, embeddings, the graphs' temporaries: on a
CPU from malloc, which openk1 keeps resident (memory.py), on CUDA from the graphs' pool).
Compiled code is cached on disk by inductor: in TORCHINDUCTOR_CACHE_DIR when set, else
`$XDG_CACHE_HOME/openk1/inductor` (~/.cache/openk1/inductor), which outlives /tmp (inductor's
own default).

Numerics: the same operations as the eager path, in another order (fused elementwise loops,
attention reductions): logits agree to fp32 rounding, log-probs within
tests/models/test_lean_compiled.py's LOGP_ATOL, and tokens are the same unless a uniform falls
within that rounding of a CDF step (probability ~1e-6 per token). Not supported (the engine
uses the eager decoder): top-p < 1 (the nucleus sort), and RoPE whose frequencies depend on the
sequence length (rope_type "dynamic").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from openk1.models.lean import Decoder, LeanModel, _bias, _Layer, _sdpa

ROW_BUCKETS = 3          # row buckets below the cache's rows: slots/2, /4, /8 (fewer rows pad up)
MIN_ROWS = 8             # smallest row bucket
MIN_LENGTH = 64          # smallest cache length bucket (and attended width bucket on CUDA)
RECOMPILE_LIMIT = 64     # graphs per compiled function: row buckets x cache lengths x dtypes


def bucket(n: int, floor: int) -> int:
    """The smallest power of two >= max(n, floor).

    >>> [bucket(n, 8) for n in (1, 8, 9, 100)]
    [8, 8, 16, 128]
    """
    n = max(n, floor, 1)
    return 1 << (n - 1).bit_length()


def unsupported_reason(lean: LeanModel, top_p: float) -> str | None:
    """Why the compiled step cannot decode for `lean` (None: it can)."""
    if top_p < 1.0:
        return "top_p < 1 (the nucleus is cut on the eager path)"
    if getattr(lean.rotary, "rope_type", "default") == "dynamic":
        return "RoPE frequencies that depend on the sequence length (rope_type dynamic)"
    return None


def cache_dir() -> str:
    """Where inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR, set here to openk1's user
    cache directory when unset (read by inductor at each compilation)."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(root) / "openk1" / "inductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


# ----------------------------------------------------------------------------- traced functions


def _decode_layer(lean: LeanModel, w: _Layer, x: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor],
                  bias: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """One layer for one new token per row: x [B, 1, d] -> [B, 1, d]; bias [B, 1, 1, W] (0 on the
    columns <= pos, -inf after), pos [B], k_cache/v_cache [slots, Hkv, T, D] written at (row, :, pos)."""
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, _, D = q.shape                                                 # q [B, H, 1, D]
        Hkv, W = k.shape[1], bias.shape[-1]
        index = (torch.arange(B, device=pos.device)[:, None], torch.arange(Hkv, device=pos.device), pos[:, None])
        k_cache.index_put_(index, k[:, :, 0])                                # k [B, Hkv, 1, D]
        v_cache.index_put_(index, v[:, :, 0])
        K, V = k_cache[:B, :, :W], v_cache[:B, :, :W]                       # [B, Hkv, W, D]
        if q.dtype != torch.float32:   # bf16: SDPA (fp32 inside), as the eager decoder
            return _sdpa(q, K, V, bias)
        grouped = q.reshape(B, Hkv, H // Hkv, D)     # q head h reads kv head h // (H / Hkv), as HF's repeat_kv
        scores = grouped @ K.transpose(-1, -2) + bias                        # [B, Hkv, G, W]
        return (torch.softmax(scores, dim=-1) @ V).reshape(B, H, 1, D)
    return lean._layer(w, x, rot, attend)


def _head_sample(lean: LeanModel, x: torch.Tensor, uniforms: torch.Tensor,
                 temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, 1, d], uniforms [B] float64, temperature 0-d float64 -> token [B], logp [B] (fp32):
    rollout/hf.py sample_tokens (top_p 1) and token_logprobs' arithmetic, op for op (the eager
    code divides float64 logits by T and fp32 logits by T rounded to fp32)."""
    logits = lean._head(x)[:, 0].float()                                     # [B, V]
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
    target = uniforms[:, None] * cdf[:, -1:]                                 # [B, 1]
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    z = logits / temperature.float()
    return token, z.gather(-1, token[:, None])[:, 0] - torch.logsumexp(z, dim=-1)


def _head_greedy(lean: LeanModel, x: torch.Tensor, uniforms: torch.Tensor,
                 temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature 0: the argmax, and its log-prob under the T = 1 policy (as the engine records)."""
    logits = lean._head(x)[:, 0].float()
    token = logits.argmax(-1)
    return token, logits.gather(-1, token[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


_COMPILED: dict[tuple[str, str], Any] = {}


def compiled(name: str, device: torch.device) -> Any:
    """The traced function `name` through torch.compile, built once per process and device type:
    inductor with static shapes (the width dimension marked dynamic by the caller on a CPU), CUDA
    graphs on CUDA."""
    key = (name, device.type)
    if key not in _COMPILED:
        cache_dir()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        functions: dict[str, Callable[..., Any]] = {"layer": _decode_layer, "sample": _head_sample,
                                                    "greedy": _head_greedy}
        fn = functions[name]
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[key] = torch.compile(fn, dynamic=False, mode=mode)
    return _COMPILED[key]


# ----------------------------------------------------------------------------- the decoder


class CompiledDecoder(Decoder):
    """A Decoder whose step is compiled and samples: `step_sample(tokens, uniforms)` -> the next
    (token, logp) of every row. `extend` and `keep` are the Decoder's (eager).

    `buckets` (default: on CUDA only): static shapes, rows and attended width rounded up to
    buckets, one graph per bucket (what CUDA graphs need). Without: rows, width and the cache's
    slots and length are dynamic dimensions, one graph for every shape and no padding rows
    (on a CPU 1.5x faster than buckets at the demo's rollout, with 2 graphs instead of 8)."""

    def __init__(self, lean: LeanModel, slots: int, length: int, temperature: float,
                 buckets: bool | None = None) -> None:
        super().__init__(lean, bucket(slots, MIN_ROWS), bucket(length, MIN_LENGTH))
        for w in self.weights:   # inductor cannot lower oneDNN's opaque reordered weights: plain ones
            w.packed = None
        self.device, self.cuda = self.k.device, self.k.device.type == "cuda"
        self.buckets = self.cuda if buckets is None else buckets
        self.head = compiled("greedy" if temperature <= 0 else "sample", self.device)
        self.layer = compiled("layer", self.device)
        self.temperature = torch.tensor(temperature if temperature > 0 else 1.0, dtype=torch.float64,
                                        device=self.device)
        # rotations of every position 0..T-1, [T, D/2, 2] fp32: rows of LeanModel.rope's table
        positions = torch.arange(self.length, device=self.device)[None]
        self.rotations = lean.rope(lean.embed(positions[:, :1]), positions)[1][0, :, 0]
        self.caches = [(self.k[i], self.v[i]) for i in range(self.k.shape[0])]   # [slots, Hkv, T, D] each
        capacity = self.k.shape[1]     # the step's inputs: tokens, positions, uniforms [slots]
        self.inputs = (torch.zeros(capacity, dtype=torch.long, device=self.device),
                       torch.zeros(capacity, dtype=torch.long, device=self.device),
                       torch.zeros(capacity, dtype=torch.float64, device=self.device))
        if not self.buckets:
            for cache in (c for pair in self.caches for c in pair):
                torch._dynamo.mark_dynamic(cache, [0, 2])
        if self.cuda:   # CUDA graphs read these in place instead of copying them at every replay
            for t in [self.k, self.v, *(c for pair in self.caches for c in pair),
                      *(v for w in self.weights for v in vars(w).values() if isinstance(v, torch.Tensor)),
                      *(v for w in self.weights for v in (w.fused or {}).values() if v is not None)]:
                torch._dynamo.mark_static_address(t, guard=False)
        shapes = f"rows in buckets of up to {capacity}" if self.buckets else "dynamic rows and width"
        self.note = f"compiled decode step ({shapes})"

    def rows_bucket(self, rows: int) -> int:
        """Rows a bucketed step runs on: a power of two, at least the cache's rows / 2^ROW_BUCKETS."""
        return bucket(rows, max(MIN_ROWS, self.k.shape[1] >> ROW_BUCKETS))

    @torch.no_grad()
    def step_sample(self, tokens: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append tokens [b] (one per row) -> the next token [b] of every row, drawn at
        uniforms [b] (float64), and its log-prob [b] (fp32)."""
        b = self.rows
        size = self.rows_bucket(b) if self.buckets else max(b, 2)   # a dynamic dimension is never 1
        ids, pos, u = (t[:size] for t in self.inputs)
        ids[:b], pos[:b], u[:b] = tokens, self.lens, uniforms   # rows b.. pad: free cache slots, outputs dropped
        width = int(self.lens.max()) + 1
        width = min(bucket(width, MIN_LENGTH), self.length) if self.buckets else max(width, 2)
        bias = _bias(torch.arange(width, device=self.device) <= pos[:, None], self.lean.dtype)[:, None, None]
        rot = self.rotations[pos][:, None, None]                             # [size, 1, 1, D/2, 2]
        rots = (rot * self.lean.head_dim ** -0.5, rot)                       # q's carries 1/sqrt(D)
        x = self.lean.embed(ids[:, None])                                    # [size, 1, d]
        if not self.buckets:
            for t in (x, pos, u, *rots):
                torch._dynamo.mark_dynamic(t, 0)
            torch._dynamo.mark_dynamic(bias, [0, 3])                         # [size, 1, 1, W]
        if self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        for w, (k_cache, v_cache) in zip(self.weights, self.caches):
            x = self.layer(self.lean, w, x, rots, bias, pos, k_cache, v_cache)
        token, logp = self.head(self.lean, x, u, self.temperature)
        self.lens = self.lens + 1
        if self.cuda:   # graph outputs are overwritten by the next replay
            return token[:b].clone(), logp[:b].clone()
        return token[:b], logp[:b]
