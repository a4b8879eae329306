"""The tiny demo model: a Llama-architecture causal LM with a character-level tokenizer.

Both are ordinary Hugging Face objects saved with `save_pretrained`, so the demo loads them
through exactly the path a real model takes (`AutoModelForCausalLM`, `AutoTokenizer`).
"""

from __future__ import annotations

import string

import torch
from pydantic import Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from openk1.config import Section

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# Settings a model trained from this random init needs, where a stage's defaults (chosen for
# pretrained checkpoints: SFT lr 2e-5, RL lr 1e-6, DPO lr 1e-6) would leave it untrained.
# `openk1 init-model` stores them in config.json (`openk1_recommended`); every later model of
# the lineage keeps them (they are part of the HF config) and the CLI fills the keys a command
# leaves unset from its section (docs/stages.md "Defaults"). Measured on the demo (docs/demo.md, docs/long2short.md):
# SFT from scratch at lr 3e-3 (1e-3 stopped at loss 0.98 after one epoch of 2,000 rows), RL at
# lr 1e-4 keeping Adam's state (a reset every iteration makes its first steps sign steps of size
# lr, which the 0.9M model does not survive), DPO at 3e-5 (3e-4 fell to 40% in 4 steps) with
# beta 1 (at 0.1 the margin never saturates and the tiny model collapsed, 68.3% -> 40.7%).
_SFT_FROM_SCRATCH = {"optim": {"lr": 3e-3, "lr_min": 3e-4, "warmup_steps": 30}, "epochs": 10}
_RL_TINY = {"optim": {"lr": 1e-4, "warmup_steps": 0}, "reset_optimizer": False}
_DPO_TINY = {"optim": {"lr": 3e-5, "lr_min": 1e-5, "warmup_steps": 0}, "beta": 1.0}
RECOMMENDED: dict[str, dict[str, object]] = {
    "sft": _SFT_FROM_SCRATCH,
    "longcot": _SFT_FROM_SCRATCH,
    "rl": _RL_TINY,
    "dpo": _DPO_TINY,
    "rm": {"optim": {"lr": 1e-3, "lr_min": 1e-4, "warmup_steps": 10}},
    "long2short": {"shortest_rs": {"optim": {"lr": 3e-4, "lr_min": 1e-4, "warmup_steps": 0}},
                   "dpo": _DPO_TINY, "rl": _RL_TINY},
}


class TinyModelConfig(Section):
    """Size of the tiny Llama (defaults: ~0.8M parameters, fast on a laptop CPU)."""

    hidden: int = Field(128, gt=0, description="hidden size d")
    layers: int = Field(4, gt=0, description="decoder layers")
    heads: int = Field(4, gt=0, description="attention heads")
    kv_heads: int = Field(4, gt=0, description="key/value heads (grouped-query attention when fewer than heads)")
    intermediate: int = Field(384, gt=0, description="MLP width")
    max_positions: int = Field(512, gt=0, description="longest sequence (max_position_embeddings)")
    rope_theta: float = Field(10000.0, gt=0.0, description="RoPE base")

    @model_validator(mode="after")
    def _shapes(self) -> TinyModelConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden / heads ({self.hidden // self.heads}) must be even "
                             "(rotary embedding)")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        return self


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII + 4 special tokens (vocab 101).

    Encoding with special tokens prepends <bos>, as Llama tokenizers do.
    """
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def tiny_llama(size: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `size`, vocabulary taken from `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=size.max_positions,
        # transformers 4.x's own argument; 5.x still takes it (into rope_parameters), unannotated
        rope_theta=size.rope_theta,   # type: ignore[call-arg]
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config.openk1_recommended = RECOMMENDED   # saved in config.json; see RECOMMENDED
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
