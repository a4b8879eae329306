"""Prompt format (models/prompting.py), stop ids and stop strings, and the whole-batch decode of a
cache without row surgery (rollout/hf.py)."""

from __future__ import annotations

import json

import pytest
import torch

from openk1.data.batching import encode_responses
from openk1.data.packing import encode_row
from openk1.errors import OpenK1Error
from openk1.models import prompting
from openk1.models.io import load_model, save_model
from openk1.models.tiny import char_tokenizer
from openk1.rollout import kv_cache
from openk1.rollout.hf import HFEngine, SamplingConfig

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer():
    """The character tokenizer with ChatML's two special tokens and template."""
    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_auto_is_chat_with_a_template_and_plain_without() -> None:
    assert prompting.resolve(char_tokenizer()) == prompting.Prompting("plain", "")
    assert prompting.resolve(chat_tokenizer(), system_prompt="Be brief.") == prompting.Prompting("chat", "Be brief.")
    assert prompting.resolve(chat_tokenizer(), "plain").format == "plain"
    with pytest.raises(OpenK1Error, match="prompt_format: chat, but the tokenizer has no chat template"):
        prompting.resolve(char_tokenizer(), "chat")


def test_chat_prompt_is_the_template_with_the_generation_prompt() -> None:
    tok = chat_tokenizer()
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    prompting.configure(tok, "chat", "Be brief.")
    got = prompting.prompt_ids(tok, "1+2=")
    want = ([start] + ids(tok, "system\nBe brief.") + [end] + ids(tok, "\n") + [start] + ids(tok, "user\n1+2=")
            + [end] + ids(tok, "\n") + [start] + ids(tok, "assistant\n"))
    assert got == want                                  # no BOS added on top of the template's tokens
    assert prompting.turn_end_id(tok) == end            # the end of an assistant turn
    assert prompting.stop_ids(tok) == sorted({tok.eos_token_id, end})


def test_plain_prompt_puts_the_system_prompt_before_a_blank_line() -> None:
    tok = char_tokenizer()
    prompting.configure(tok, "plain", "Be brief.")
    assert prompting.prompt_ids(tok, "1+2=") == tok("Be brief.\n\n1+2=", add_special_tokens=True)["input_ids"]
    prompting.configure(tok, "plain")
    assert prompting.prompt_ids(tok, "1+2=") == [tok.bos_token_id] + ids(tok, "1+2=")
    assert prompting.turn_end_id(tok) == tok.eos_token_id


def test_sft_rows_train_the_turn_end_in_chat_and_eos_in_plain() -> None:
    tok = chat_tokenizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompting.configure(tok, "chat")
    example = encode_row({"prompt": "1+2=", "response": "3"}, tok)
    prompt = prompting.prompt_ids(tok, "1+2=")
    assert example.ids == prompt + ids(tok, "3") + [end]
    assert example.action_mask == [0] * len(prompt) + [1, 1]
    response_ids, mask, _ = encode_responses(tok, ["3"], 8)
    assert response_ids[0].tolist() == ids(tok, "3") + [end] and mask[0].tolist() == [1, 1]
    prompting.configure(tok, "plain")
    assert encode_row({"prompt": "1+2=", "response": "3"}, tok).ids[-1] == tok.eos_token_id


def test_the_format_is_recorded_with_the_model_and_auto_follows_it(tiny_model_dir, tmp_path) -> None:
    model, tok = load_model(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    prompting.configure(tok, "plain", "Think first.")   # trained plain although it has a template
    model.resize_token_embeddings(len(tok))
    save_model(model, tok, tmp_path / "m")
    assert json.loads((tmp_path / "m" / prompting.RECORD).read_text()) == {"format": "plain",
                                                                           "system": "Think first."}
    _, again = load_model(tmp_path / "m")               # auto: the recorded format, not the template
    assert prompting.prompting(again) == prompting.Prompting("plain", "Think first.")
    _, told = load_model(tmp_path / "m", prompts=prompting.PromptSettings("chat"))
    assert prompting.prompting(told) == prompting.Prompting("chat", "")
    (tmp_path / "m" / prompting.RECORD).write_text('{"format": "markdown"}')
    with pytest.raises(OpenK1Error, match="format must be chat or plain"):
        load_model(tmp_path / "m")


def test_generation_config_eos_ids_stop_generation(tiny) -> None:
    """An id listed in generation_config.eos_token_id (not the tokenizer's EOS) ends a response."""
    model, tok = tiny
    sampling = SamplingConfig(max_new_tokens=16)          # sampled (seeded): greedy repeats one token
    rollout = HFEngine(model, tok, sampling).generate(["12+3="], 1, seed=0)
    tokens = rollout.response_ids[0, :int(rollout.action_mask[0].sum())].tolist()
    j = next(j for j in range(1, len(tokens)) if tokens[j] not in tokens[:j])   # a new token, not the first
    stop = tokens[j]
    assert stop != tok.eos_token_id and len(tokens) > j + 1
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    prompting.record_eos_ids(tok, model)
    cut = HFEngine(model, tok, sampling).generate(["12+3="], 1, seed=0)
    assert cut.response_ids[0, :int(cut.action_mask[0].sum())].tolist() == tokens[:j + 1]
    assert cut.stop_reason == ["normal"]


def test_stop_strings_end_a_response_at_the_completing_token(tiny) -> None:
    model, tok = tiny
    greedy = SamplingConfig(max_new_tokens=16)            # seeded sampling: varied text
    full = HFEngine(model, tok, greedy).generate(["12+3="], 1, seed=0)
    tokens = full.response_ids[0, :int(full.action_mask[0].sum())].tolist()
    text = tok.decode(tokens)
    stop = text[3:5]                                     # two characters from the middle
    first = text.index(stop)
    engine = HFEngine(model, tok, greedy.model_copy(update={"stop": [stop]}))
    cut = engine.generate(["12+3="], 1, seed=0)
    kept = cut.response_ids[0, :int(cut.action_mask[0].sum())].tolist()
    assert tok.decode(kept) == text[:first + len(stop)] and cut.stop_reason == ["normal"]
    # a stop string split across two partial-rollout segments is found in the second
    from openk1.rollout.engine import Request

    prompt = tuple(tok("12+3=", add_special_tokens=True)["input_ids"])
    head = engine.sample([Request(prompt, (0, 0), budget=first + 1)])   # generate's stream of row 0
    assert head.stop_reason == ["budget"]
    tail = engine.sample([Request(prompt, (0, 0), tuple(head.response_ids[0].tolist()))])
    assert tail.stop_reason == ["normal"] and int(tail.action_mask[0].sum()) == len(kept) - first - 1


@pytest.mark.parametrize("continuous", [True, False])
def test_a_cache_without_row_surgery_decodes_whole_batches_alike(tiny, monkeypatch, continuous) -> None:
    """Rows finish at different times; without surgery they stay in the cache behind a 0 mask:
    the same tokens and, up to batch-shape rounding, the same log-probs as with surgery."""
    model, tok = tiny
    model.generation_config.eos_token_id = ids(tok, "0123456789")   # the random model stops at any digit
    prompting.record_eos_ids(tok, model)
    sampling = SamplingConfig(max_new_tokens=20, batch_size=3, lean=False, continuous_batching=continuous)
    prompts = ["12+3=", "7+845=", "1+1=", "99+1="]
    reference = HFEngine(model, tok, sampling).generate(prompts, 2, seed=4)
    assert len(set(reference.lengths.tolist())) > 2
    monkeypatch.setattr(kv_cache, "supports_surgery", lambda cache: False)
    engine = HFEngine(model, tok, sampling)
    whole = engine.generate(prompts, 2, seed=4)
    assert torch.equal(whole.response_ids, reference.response_ids)
    assert whole.stop_reason == reference.stop_reason
    # fp32 log-probs (|logp| < ~10) from other batch shapes: ~20 ulps of 10 is 2e-5
    assert torch.allclose(whole.logp, reference.logp, atol=2e-5)
    assert "cannot drop or join rows: whole batches" in engine.forward_path


def test_sliding_window_model_decodes_with_continuous_batching() -> None:
    """Mistral with a window shorter than the contexts: the rollout's log-probs are a full
    forward's (HF applies the window through its mask over a full-attention cache)."""
    from transformers import MistralConfig, MistralForCausalLM

    from openk1.models.forward import response_logprobs

    tok = char_tokenizer()
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=4, max_position_embeddings=128, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)).eval()
    engine = HFEngine(model, tok, SamplingConfig(max_new_tokens=12, batch_size=2))
    assert engine.forward_path == "hf (sliding-window attention)"
    rollout = engine.generate(["12+3=", "7+845=", "1+1="], 2, seed=0)
    fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.action_mask)
    mask = rollout.action_mask.bool()
    # fp32, 2 layers: the same arithmetic in other shapes; 1e-5 is ~100 ulps of |logp| ~ 4
    assert int(mask.sum()) > 30 and torch.allclose(rollout.logp[mask], fresh[mask], atol=1e-5)
