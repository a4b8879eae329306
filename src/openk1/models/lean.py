"""A lean forward pass for Llama-family Hugging Face models, and a static KV cache for decoding.

The HF model stays the model: its parameters are read (never copied for training) and its rotary
embedding module computes cos/sin, so every RoPE variant HF supports is supported. What changes is
the per-token overhead around the matmuls, which on a CPU and a small model is most of the time:

  - fewer elementwise passes: RMSNorm, SwiGLU and RoPE are autograd functions of
    models/fused.py; RoPE is one complex multiply, on q/k whose head dimensions are permuted so
    that HF's rotate-half pairs (j, j + D/2) are adjacent (`_interleave`: attention's q.k is
    unchanged by one permutation of both), and q's rotation carries the 1/sqrt(D) scale,
  - q/k/v and gate/up run as one matmul each when decoding (the weights concatenated),
  - no mask objects, cache classes, hooks or output dataclasses per call,
  - decoding writes K/V into a preallocated cache [layers, slots, Hkv, T, D] in place; rows that
    finish are compacted by moving only the rows that fill the holes (no per-step concatenation).

Supported: model_type llama, qwen2, qwen3 (q/k norm), mistral without a sliding window; SiLU MLP,
no attention dropout (`LeanModel.of` returns None otherwise, and callers use HF's forward).
The result equals HF's forward to fp32 rounding (tests/models/test_lean.py: 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F

from openk1.models.fused import rms_norm_to, rotate, swiglu_down

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


@dataclass
class _Layer:
    """Weights of one decoder layer: views of the HF parameters (cast to the compute dtype; q
    and k rows, biases and norms in the interleaved order of `_interleave`).

    Training multiplies by q/k/v and gate/up separately: one fused matmul would make backward
    concatenate the activation gradients (a full pass over [B, L, 3 d]). Decoding (no grad)
    fuses them once (`fuse`) and may reorder them for oneDNN (`pack`)."""

    norm1: torch.Tensor        # [d]
    q: torch.Tensor            # [H D, d] (head dims interleaved)
    k: torch.Tensor            # [Hkv D, d] (head dims interleaved)
    v: torch.Tensor            # [Hkv D, d]
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    q_norm: torch.Tensor | None    # [D] (qwen3)
    k_norm: torch.Tensor | None
    o: torch.Tensor            # [d, H D]
    o_bias: torch.Tensor | None
    norm2: torch.Tensor        # [d]
    gate: torch.Tensor         # [I, d]
    up: torch.Tensor           # [I, d]
    down: torch.Tensor         # [d, I]
    fused: dict[str, torch.Tensor | None] | None = None    # qkv [(H + 2 Hkv) D, d], gate_up [2 I, d]
    packed: dict[str, torch.Tensor] | None = None   # oneDNN-reordered copies (bf16 decoding on CPU)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x @ W_name^T (+ bias): from the reordered weight when there is one."""
        source = self.fused if self.fused is not None and name in self.fused else vars(self)
        bias = source.get(f"{name}_bias")
        if self.packed is not None:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed[name], bias, "none", [], "")
            return out
        weight = source[name]
        assert weight is not None, f"no weight {name!r}"
        return F.linear(x, weight, bias)

    def fuse(self) -> None:
        """One matmul for q/k/v and one for gate/up: for decoding (no backward to pay for it) and
        under torch.compile (inductor handles the backward's concatenation)."""
        self.fused = {"qkv": torch.cat([self.q, self.k, self.v]),
                      "qkv_bias": _cat(self.q_bias, self.k_bias, self.v_bias),
                      "gate_up": torch.cat([self.gate, self.up])}

    def pack(self, rows: int) -> None:
        """Reorder the matmul weights once into oneDNN's blocked layout (AMX on CPUs that have
        it): 1.5x faster bf16 matmuls at decoding's few rows, bit-identical results."""
        assert self.fused is not None
        weights = {"qkv": self.fused["qkv"], "o": self.o, "gate_up": self.fused["gate_up"], "down": self.down}
        self.packed = {name: torch.ops.mkldnn._reorder_linear_weight(w, rows) for name, w in weights.items()}


def _cat(*tensors: Any) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


def _layer_weights(layer: Any) -> _Layer:
    a, m = layer.self_attn, layer.mlp
    return _Layer(
        norm1=layer.input_layernorm.weight,
        q=a.q_proj.weight, k=a.k_proj.weight, v=a.v_proj.weight,
        q_bias=a.q_proj.bias, k_bias=a.k_proj.bias, v_bias=a.v_proj.bias,
        q_norm=a.q_norm.weight if hasattr(a, "q_norm") else None,
        k_norm=a.k_norm.weight if hasattr(a, "k_norm") else None,
        o=a.o_proj.weight, o_bias=a.o_proj.bias,
        norm2=layer.post_attention_layernorm.weight,
        gate=m.gate_proj.weight, up=m.up_proj.weight, down=m.down_proj.weight,
    )


def unsupported_reason(model: Any) -> str | None:
    """Why the lean path cannot run `model` (None: it can)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {SUPPORTED}"
    if (act := getattr(config, "hidden_act", "silu")) != "silu":
        return f"hidden_act {act!r}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "attention_dropout", 0.0) or getattr(config, "mlp_bias", False):
        return "attention dropout or MLP bias"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "sharded parameters (FSDP): the layers' own forward gathers them"
    return None


class LeanModel:
    """Functional forward of an HF Llama-family causal LM over its own parameters."""

    def __init__(self, model: Any, dtype: torch.dtype | None = None, compile: bool = False) -> None:
        c = model.config
        self.model = model
        self.dtype = dtype or next(model.parameters()).dtype   # compute dtype (weights cast to it)
        self.compile = compile   # full-sequence layers through torch.compile (compiled_layer)
        self.heads, self.kv_heads = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        self.rotary = model.model.rotary_emb

    @classmethod
    def of(cls, model: Any, dtype: torch.dtype | None = None, compile: bool = False) -> LeanModel | None:
        return None if unsupported_reason(model) else cls(model, dtype, compile)

    def weights(self) -> list[_Layer]:
        """Per-layer weights, matmul weights in the compute dtype, differentiable (concatenations
        and casts are part of the graph, so gradients reach the HF parameters in their dtype).
        Norm weights keep the parameters' dtype: the residual stream and the norms run in it."""
        layers = []
        for layer in self.model.model.layers:
            # tensors and optional tensors (biases, qwen3's norms), one per _Layer field
            prepared: dict[str, Any] = {name: self._prepare(name, w) for name, w in vars(_layer_weights(layer)).items()}
            layers.append(_Layer(**prepared))
        return layers

    def _prepare(self, name: str, w: torch.Tensor | None) -> torch.Tensor | None:
        if name in ("q", "k", "q_bias", "k_bias", "q_norm", "k_norm"):
            w = _interleave(w, self.head_dim)
        if name in ("q", "k", "v", "q_bias", "k_bias", "v_bias", "o", "o_bias", "gate", "up", "down"):
            w = _to(w, self.dtype)
        return w

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations of q and of k, [B, n, 1, D/2, 2] (cos, sin per pair; fp32), once per
        forward from HF's rotary module (whose cos/sin [B, n, D] repeat their first half: every
        HF rotate-half RoPE). q's carries the attention scale 1/sqrt(D)."""
        cos, sin = self.rotary(x, positions)                                # [B, n, D]
        h = self.head_dim // 2
        rot = torch.stack([cos[..., :h], sin[..., :h]], dim=-1).float()[:, :, None]
        return rot * self.head_dim ** -0.5, rot

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = self.model.model.embed_tokens(ids)               # [B, L, d]
        return x

    # ------------------------------------------------------------------ full sequences

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               keep: int, weights: list[_Layer] | None = None) -> torch.Tensor:
        """Logits of the last `keep` positions [B, keep, V] for input_ids [B, L].

        attention_mask [B, L] (1 real, 0 padding, any side), position_ids [B, L]. A real token
        attends to the real tokens at or before it; a padding query attends to itself only
        (its output is never used, and no row of the softmax is empty)."""
        L = input_ids.shape[1]
        real = attention_mask.bool()
        causal = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=input_ids.device)
        bias = _bias((causal & real[:, None, :]) | eye, self.dtype)[:, None]   # [B, 1, L, L]
        x = self.embed(input_ids)                                           # [B, L, d]
        rot = self.rope(x, position_ids)                                    # [B, L, 1, D/2, 2] x 2
        for w in weights or self.weights():
            if self.compile:   # inductor does better with the fused matmuls (0.27 vs 0.36 s per
                w.fuse()       # bf16 micro-batch of 32 x 71 tokens): it handles their backward
            layer = compiled_layer() if self.compile else LeanModel._layer
            x = layer(self, w, x, rot, lambda q, k, v: _attention(q, k, v, bias))
        return self._head(x[:, -keep:])

    # ------------------------------------------------------------------ one layer

    def _layer(self, w: _Layer, x: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor], attend: Any) -> torch.Tensor:
        """x [B, n, d] -> [B, n, d]; attend(q, k, v) with q [B, H, n, D] (scaled by 1/sqrt(D)),
        k/v [B, Hkv, n, D]; rot: `rope`'s rotations of q and k.

        The residual stream x and the norms stay in the parameters' dtype; matmuls and attention
        run in the compute dtype (one cast after each norm)."""
        B, n, _ = x.shape
        q, k, v = self._qkv(w, rms_norm_to(x, w.norm1, self.eps, self.dtype), rot)
        a = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, H, n, D]
        x = x + w.linear("o", a.transpose(1, 2).reshape(B, n, -1))
        return x + self._mlp(w, rms_norm_to(x, w.norm2, self.eps, self.dtype))

    def _qkv(self, w: _Layer, h: torch.Tensor,
             rot: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h [B, n, d] -> q [B, n, H, D] and k, v [B, n, Hkv, D], q and k rotated (q scaled)."""
        B, n, _ = h.shape
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        if w.fused is not None:     # one matmul (decoding, compile)
            q, k, v = w.linear("qkv", h).view(B, n, H + 2 * Hkv, D).split([H, Hkv, Hkv], dim=2)
        else:
            q, k, v = (w.linear(name, h).view(B, n, -1, D) for name in ("q", "k", "v"))
        if w.q_norm is not None and w.k_norm is not None:    # qwen3: RMSNorm over each head before RoPE
            q = F.rms_norm(q.float(), (D,), w.q_norm.float(), self.eps).to(self.dtype)
            k = F.rms_norm(k.float(), (D,), w.k_norm.float(), self.eps).to(self.dtype)
        return rotate(q, rot[0]), rotate(k, rot[1]), v

    def _mlp(self, w: _Layer, h: torch.Tensor) -> torch.Tensor:
        """SwiGLU: down(silu(gate) * up), h [B, n, d] -> [B, n, d]."""
        if w.fused is not None:
            gate, up = w.linear("gate_up", h).chunk(2, dim=-1)
            return w.linear("down", F.silu(gate) * up)
        gate, up = w.linear("gate", h), w.linear("up", h)                    # [B, n, I] each
        if (not torch.compiler.is_compiling() and torch.is_grad_enabled()
                and 2 * gate.numel() * gate.element_size() > RECOMPUTE_MLP_BYTES):
            return swiglu_down(gate, up, w.down)   # saves gate and up only (models/fused.py)
        return F.linear(F.silu(gate) * up, w.down)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = rms_norm_to(x, self.model.model.norm.weight, self.eps, self.dtype)
        head = self.model.lm_head
        return F.linear(x, _to(head.weight, self.dtype), _to(head.bias, self.dtype))

    @torch.no_grad()
    def decoder(self, slots: int, length: int) -> Decoder:
        """A static-cache decoder with `slots` rows of at most `length` tokens each."""
        return Decoder(self, slots, length)


_COMPILED: list[Any] = []


def compiled_layer() -> Any:
    """LeanModel._layer through torch.compile (inductor; dynamic shapes), built once per process.

    Inductor fuses the elementwise work between the matmuls (norms, casts, RoPE, SwiGLU, the
    softmax's neighbours) forward and backward: 1.5x faster bf16 updates of the benchmark's
    tiny Llama on a CPU. The price is the first call: 15-40 s of compilation on a CPU (cached on
    disk by inductor for later processes), and one recompile when B x L first crosses 4096.
    Needs a C++ compiler on CPU (Triton on GPU)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(LeanModel._layer, dynamic=True))
    return _COMPILED[0]


def _packable(dtype: torch.dtype, device: torch.device) -> bool:
    """oneDNN weight reordering: bf16 on a CPU build with mkldnn (fp32 gains little there)."""
    return (dtype == torch.bfloat16 and device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _interleave(w: torch.Tensor | None, D: int) -> torch.Tensor | None:
    """Rows (or elements) of a q/k projection, bias or per-head norm, head by head, in the order
    0, D/2, 1, D/2 + 1, ...: HF's rotate-half pairs (j, j + D/2) become adjacent (j-th complex
    number of `fused.rotate`). q and k get the same permutation, so q.k is unchanged; the
    index_select is part of the graph (gradients reach the HF parameter in its own order)."""
    if w is None:
        return None
    order = torch.arange(D, device=w.device).view(2, D // 2).t().reshape(-1)     # [D]
    interleaved: torch.Tensor = w.unflatten(0, (-1, D)).index_select(1, order).flatten(0, 1)
    return interleaved


def _bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


@overload
def _to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...


@overload
def _to(x: None, dtype: torch.dtype) -> None: ...


def _to(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return x if x is None or x.dtype == dtype else x.to(dtype)


RECOMPUTE_MLP_BYTES = 16 << 20   # larger gate/up activations: silu(gate) * up recomputed in backward
MATMUL_ATTENTION_MAX = 512   # longer sequences: SDPA's kernel (no [B, H, L, L] scores in memory)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of q [B, H, n, D] (already scaled by 1/sqrt(D): `rope`) over k/v [B, Hkv, W, D]
    with an additive bias [B, 1, n, W].

    Two batched matmuls and a softmax (fp32 inside the kernel): on a CPU several times faster
    than SDPA's flash kernel for bf16 training, whose backward is slow, at the cost of
    materialising the [B, H, n, W] scores. SDPA instead for sequences over MATMUL_ATTENTION_MAX,
    for fp32 training (as fast, and it keeps no scores) and for one bf16 query over a cache
    slice (decoding: it reads the strided cache without a copy)."""
    decoding_bf16 = q.shape[2] == 1 and q.dtype == torch.bfloat16
    if q.shape[2] > MATMUL_ATTENTION_MAX or (q.dtype == torch.float32 and q.requires_grad) or decoding_bf16:
        return _sdpa(q, k, v, bias)
    if q.shape[1] != k.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) + bias                                    # [B, H, n, W]
    return torch.softmax(scores, dim=-1) @ v


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if q.shape[1] != k.shape[1]:   # a branch, not enable_gqa=<bool expr>: compiles with dynamic shapes
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


class Decoder:
    """Rows 0..b-1 of a static KV cache [layers, slots, Hkv, length, D], one sequence each.

    Row i holds its tokens in columns 0..lens[i]-1 (no padding inside a row). `extend` prefills
    new rows after the last one, `step` appends one token to every row, `keep` drops rows and
    compacts the rest by moving only the rows that fill the holes (their new order is returned).
    Weights are packed once per decoder (no grad), so create one per rollout call.
    """

    def __init__(self, lean: LeanModel, slots: int, length: int) -> None:
        self.lean, self.length = lean, length
        self.weights = lean.weights()     # cast and fused once: the decoder runs under no_grad
        p = next(lean.model.parameters())
        for w in self.weights:
            w.fuse()
            if _packable(lean.dtype, p.device):
                w.pack(slots)
        shape = (len(self.weights), slots, lean.kv_heads, length, lean.head_dim)
        self.k = torch.zeros(shape, dtype=lean.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=lean.dtype, device=p.device)
        self.lens = torch.zeros(0, dtype=torch.long, device=p.device)      # [b]

    @property
    def rows(self) -> int:
        return self.lens.shape[0]

    @torch.no_grad()
    def extend(self, contexts: list[list[int]], pad_id: int) -> torch.Tensor:
        """Prefill new rows (token lists, right-padded here) after the existing ones -> logits of
        each context's last token [n, V] (fp32)."""
        b, n = self.rows, len(contexts)
        lens = torch.tensor([len(c) for c in contexts], device=self.lens.device)
        width = int(lens.max())
        if b + n > self.k.shape[1] or width > self.length:
            raise ValueError(f"decoder holds {self.k.shape[1]} rows x {self.length} tokens; "
                             f"asked for {b + n} rows, a context of {width}")
        ids = torch.full((n, width), pad_id, dtype=torch.long, device=self.lens.device)
        for i, c in enumerate(contexts):
            ids[i, :len(c)] = torch.tensor(c, device=ids.device)
        positions = torch.arange(width, device=ids.device).expand(n, width)
        causal = _bias(torch.ones(width, width, dtype=torch.bool, device=ids.device).tril(), self.lean.dtype)
        x = self.lean.embed(ids)                                             # [n, W, d]
        rot = self.lean.rope(x, positions)
        for layer, w in enumerate(self.weights):
            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = layer) -> torch.Tensor:
                self.k[layer, b:b + n, :, :width], self.v[layer, b:b + n, :, :width] = k, v
                return _attention(q, k, v, causal)   # right padding: real queries never see it
            x = self.lean._layer(w, x, rot, attend)
        last = x[torch.arange(n, device=x.device), lens - 1][:, None]       # [n, 1, d]
        self.lens = torch.cat([self.lens, lens])
        return self.lean._head(last)[:, 0].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append tokens [b] (one per row) -> next-token logits [b, V] (fp32)."""
        b, pos = self.rows, self.lens                                       # [b]
        Hkv, T, D = self.k.shape[2], self.length, self.k.shape[-1]
        heads = torch.arange(Hkv, device=pos.device)
        # flat row of (slot i, head h, column pos[i]) in a layer's cache viewed as [slots * Hkv * T, D]
        flat = ((torch.arange(b, device=pos.device)[:, None] * Hkv + heads) * T + pos[:, None]).reshape(-1)
        width = int(pos.max()) + 1
        mask = _bias(torch.arange(width, device=pos.device) <= pos[:, None], self.lean.dtype)[:, None, None]
        x = self.lean.embed(tokens[:, None])                                # [b, 1, d]
        rot = self.lean.rope(x, pos[:, None])
        for layer, w in enumerate(self.weights):
            def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = layer) -> torch.Tensor:
                K, V = self.k[layer], self.v[layer]                          # [slots, Hkv, T, D]
                K.view(-1, D).index_copy_(0, flat, k.reshape(-1, D))       # k [b, Hkv, 1, D]
                V.view(-1, D).index_copy_(0, flat, v.reshape(-1, D))
                return _attention(q, K[:b, :, :width], V[:b, :, :width], mask)
            x = self.lean._layer(w, x, rot, attend)
        self.lens = pos + 1
        return self.lean._head(x)[:, 0].float()

    @torch.no_grad()
    def keep(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep rows where keep [b] is True -> order [n]: new row j is old row order[j] (on the
        device `keep` came from: the engine's bookkeeping is on the CPU)."""
        came_from, keep = keep.device, keep.to(self.lens.device)
        n = int(keep.sum())
        order = torch.arange(n, device=keep.device)
        holes = (~keep[:n]).nonzero().squeeze(-1)                            # rows < n dropped
        movers = keep[n:].nonzero().squeeze(-1) + n                          # rows >= n kept
        if holes.numel():
            width = int(self.lens.max())
            self.k[:, holes, :, :width] = self.k[:, movers, :, :width]
            self.v[:, holes, :, :width] = self.v[:, movers, :, :width]
            order[holes] = movers
        self.lens = self.lens[order]
        return order.to(came_from)
