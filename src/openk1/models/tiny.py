"""The tiny demo model: a Llama-architecture causal LM with a character-level tokenizer.

Both are ordinary Hugging Face objects saved with `save_pretrained`, so the demo loads them
through exactly the path a real model takes (`AutoModelForCausalLM`, `AutoTokenizer`).
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from openk1.config import Section

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


class TinyModelConfig(Section):
    """Size of the tiny Llama (defaults: ~0.8M parameters, fast on a laptop CPU)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    max_positions: int = 512
    rope_theta: float = 10000.0


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
        rope_theta=size.rope_theta,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
