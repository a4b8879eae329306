"""Tiny random models of several Hugging Face causal-LM families sharing one byte-level BPE
tokenizer with a ChatML chat template (a helper for tests/models/test_families.py).

`bpe_tokenizer(folder)`: byte-level BPE trained here with `tokenizers` on a small built-in
corpus (vocab 300: the 256 bytes, 3 special tokens, ~40 merges), special tokens
`<|endoftext|>` (EOS), `<|im_start|>`, `<|im_end|>`; no pad token (openk1 then pads with EOS,
as for GPT-2 and Llama). `tiny_model(kind, tokenizer, folder)`: a random model of that family
(hidden 32, 2 layers, 4 heads, 2 KV heads where the family has them, intermediate 64, 256
positions, fixed seed) whose generation_config lists `<|im_end|>` and `<|endoftext|>` as EOS,
saved with save_pretrained (model + tokenizer) into `folder`.

Note: transformers 5's AutoTokenizer loads the tokenizer of a `qwen2` folder as Qwen2Tokenizer,
whose pre-tokenizer (Qwen's regex: digits one by one) replaces the saved one, so the Qwen2 models
see other token ids than the rest; tests use the tokenizer `load_model` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB = 300
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# kind -> (config class, model class, family-specific config values)
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral_sw": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
    # layer_types alternate sliding / full; eager attention, as HF recommends for Gemma 2 (soft-capping):
    # config.json does not record it, and transformers 5 loads Gemma 2 with eager attention by default
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"sliding_window": 8, "query_pre_attn_scalar": 8,
                                                     "attn_implementation": "eager"}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
}
LEAN = ("llama", "qwen2", "qwen3", "mistral")    # models/lean.py runs these


def corpus() -> list[str]:
    """Arithmetic lines and a few words, the kind of text the tests' prompts are made of."""
    lines = [f"{a}+{b}={a + b}" for a in range(30) for b in range(0, 30, 3)]
    lines += [f"{a}*{b}={a * b}" for a in range(12) for b in range(12)]
    words = ("the answer is boxed what compute sum of and plus equals so check ok show your work "
             "question response correct reasoning prompt user assistant system number")
    lines += [words, words.upper(), "\\boxed{12} \\boxed{7}"] * 5
    return lines


_TOKENIZERS: dict[str, Any] = {}   # one per session: training takes ~0.1 s, loading ~10 ms


def bpe_tokenizer(folder: str | Path) -> Any:
    """The test tokenizer (module doc), saved in `folder` (and returned); trained once per
    session, later calls save the same one."""
    if "bpe" not in _TOKENIZERS:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS, IM_START, IM_END],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus(), trainer=trainer)
        _TOKENIZERS["bpe"] = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token=EOS, chat_template=CHATML)
    tokenizer = _TOKENIZERS["bpe"]
    Path(folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def ids(tokenizer: Any) -> dict[str, int]:
    return {name: int(tokenizer.convert_tokens_to_ids(name)) for name in (EOS, IM_START, IM_END)}


def tiny_config(kind: str, tokenizer: Any) -> Any:
    config_name, _, extra = KINDS[kind]
    special = ids(tokenizer)
    eos = special[EOS]
    values: dict[str, Any]
    if kind == "gpt2":
        values = {"vocab_size": len(tokenizer), "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64,
                  "n_positions": 256, "bos_token_id": eos, "eos_token_id": eos,
                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    else:
        values = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
                  "max_position_embeddings": 256, "bos_token_id": eos, "eos_token_id": eos,
                  "pad_token_id": eos, "tie_word_embeddings": kind in ("gemma", "gemma2")}
    values.update({k: v for k, v in extra.items() if k != "attn_implementation"})
    config = getattr(transformers, config_name)(**values)
    if "attn_implementation" in extra:
        config._attn_implementation = extra["attn_implementation"]
    return config


def tiny_model(kind: str, tokenizer: Any, folder: str | Path, seed: int = 0) -> Any:
    """A random `kind` model (module doc) saved with `tokenizer` into `folder`; returned in eval mode."""
    _, model_name, _ = KINDS[kind]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(tiny_config(kind, tokenizer))
    special = ids(tokenizer)
    model.generation_config.eos_token_id = [special[IM_END], special[EOS]]
    model.generation_config.pad_token_id = special[EOS]
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model.eval()
