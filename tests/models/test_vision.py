"""The tiny VLM (models/vision.py): built, saved and loaded back through the Auto classes, `<image>`
expanded to the right number of tokens, image features computed once = those inside HF's forward,
generation log-probs = a fresh forward, the image changes the logits, `init-model` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from openk1.errors import OpenK1Error
from openk1.models.io import recommended_settings
from openk1.models.tiny import RECOMMENDED, TinyModelConfig, char_tokenizer
from openk1.models.vision import (
    encode,
    image_features,
    is_vision,
    load_vision_model,
    save_vision_model,
    tiny_processor,
    tiny_vlm,
    vlm_generate,
    vlm_response_logprobs,
)
from openk1.padding import pad

SMALL = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
TOKENS = 16   # (32 px / patch 8)^2 patches; the CLS token is dropped ("default")

# Rollout log-probs against a fresh forward (same tokens, fp32): the two differ only in summation
# order (one cached token a step vs one pass over [prompt | response]), as in
# tests/rollout/test_hf_engine.py. |logp| ~ log V = 4.6 (V = 102), fp32 eps 1.2e-7: errors of ~eps
# relative random-walk over a few hundred accumulated ops (hidden 32, <= ~60 attended positions of
# which 16 image tokens, a logsumexp over 102): sqrt(300) x 1.2e-7 x 5 ~ 1e-5.
LOGP_ATOL = 1e-5


def picture(seed: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    """A random RGB picture (not square: the processor resizes and centre-crops it)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vlm") / "model"
    model, processor = tiny_vlm(SMALL, char_tokenizer(), seed=0)
    save_vision_model(model, processor, path)
    return path


@pytest.fixture(scope="module")
def vlm(vlm_dir: Path):
    model, processor = load_vision_model(vlm_dir)
    return model.eval(), processor


def test_default_size_is_small():
    model, processor = tiny_vlm(TinyModelConfig(), char_tokenizer(), seed=0)
    n = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert n < 2_000_000 and vision < 50_000, (n, vision)
    assert len(processor.tokenizer) == 102 and model.config.text_config.vocab_size == 102
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") == 101
    assert model.lm_head.weight is model.get_input_embeddings().weight   # tied, as the tiny Llama


def test_saved_folder_loads_through_the_auto_classes(vlm_dir: Path, tiny_model_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(vlm_dir))
    processor = AutoProcessor.from_pretrained(str(vlm_dir))
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert (processor.patch_size, processor.num_additional_image_tokens) == (8, 1)
    assert processor.vision_feature_select_strategy == model.config.vision_feature_select_strategy == "default"
    fresh, _ = tiny_vlm(SMALL, char_tokenizer(), seed=0)
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert is_vision(vlm_dir) and is_vision(vlm_dir.parent / "nothing") is False
    assert not is_vision(tiny_model_dir)
    assert recommended_settings(vlm_dir, "sft") == RECOMMENDED["sft"]
    with pytest.raises(OpenK1Error, match="not a vision-language model"):
        load_vision_model(tiny_model_dir)


def test_each_image_marker_expands_to_its_tokens(vlm):
    _, processor = vlm
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    enc = encode(processor, "a<image>b<image>c", [picture(0), picture(1, (20, 64))])
    ids = enc["input_ids"][0].tolist()
    assert enc["pixel_values"].shape == (2, 3, 32, 32)
    assert ids.count(image_id) == 2 * TOKENS and len(ids) == 1 + 3 + 2 * TOKENS   # BOS + "abc"
    assert processor.tokenizer.decode([i for i in ids if i != image_id], skip_special_tokens=True) == "abc"
    assert enc["attention_mask"].all()
    assert "pixel_values" not in encode(processor, "no picture", [])
    with pytest.raises(OpenK1Error, match="1 <image> marker"):
        encode(processor, "a<image>", [picture(0), picture(1)])
    wider = tiny_processor(char_tokenizer(), image_size=48, patch=8)   # adds <image> to the tokenizer
    wider_ids = encode(wider, "<image>", [picture(0)])["input_ids"]
    assert int((wider_ids == image_id).sum()) == 36                     # (48 / 8)^2


def test_features_computed_once_equal_those_inside_the_forward(vlm):
    model, processor = vlm
    enc = encode(processor, "look: <image> what?", [picture(2)])
    with torch.no_grad():
        features = image_features(model, enc["pixel_values"])
        out = model(**enc)
    assert features.shape == (1, TOKENS, SMALL.hidden)
    assert torch.equal(features[0], out.image_outputs.pooler_output[0])
    from openk1.models.vision import embed

    with torch.no_grad():   # HF's placement of the features (from pixel_values) = embed()'s
        mine = model(inputs_embeds=embed(model, enc["input_ids"], features), attention_mask=enc["attention_mask"])
    assert torch.equal(out.logits, mine.logits)
    response_ids = torch.tensor([[40, 41, 42]])
    args = (model, enc["input_ids"], enc["attention_mask"], response_ids, torch.ones_like(response_ids))
    with torch.no_grad():
        by_pixels = vlm_response_logprobs(*args, pixel_values=enc["pixel_values"])
        by_features = vlm_response_logprobs(*args, features=features)
    assert torch.equal(by_pixels, by_features)
    with pytest.raises(OpenK1Error, match="16 image tokens in the batch for 0"):
        vlm_response_logprobs(*args)


def test_the_image_changes_the_logits_after_it_only(vlm):
    model, processor = vlm
    prompt = "before <image> after"
    with torch.no_grad():
        a = model(**encode(processor, prompt, [picture(3)])).logits[0]
        b = model(**encode(processor, prompt, [picture(4)])).logits[0]
    first_image = len("before ") + 1                                    # BOS + "before "
    assert torch.equal(a[:first_image], b[:first_image])               # causal: earlier positions untouched
    assert (a[first_image:] - b[first_image:]).abs().amax(-1).min() > 1e-3   # every later position moves


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_generation_logprobs_equal_a_fresh_forward(vlm, temperature):
    model, processor = vlm
    out = vlm_generate(model, processor, "<image> describe:", [picture(5)], max_new_tokens=24, seed=0,
                       temperature=temperature, samples=3)
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape and out.tokens.shape[0] == 3
    assert out.features is not None and out.pixel_values is not None and out.mask.sum() > 20
    mask = out.mask.bool()
    args = (model, out.prompt_ids, out.prompt_mask, out.tokens, out.mask)
    scored_t = temperature if temperature > 0 else 1.0   # greedy records the T = 1 log-probs
    with torch.no_grad():
        fresh = vlm_response_logprobs(*args, pixel_values=out.pixel_values.repeat(3, 1, 1, 1), temperature=scored_t)
        shared = vlm_response_logprobs(*args, features=out.features.repeat(3, 1, 1), temperature=scored_t)
    torch.testing.assert_close(out.logprobs[mask], fresh[mask], atol=LOGP_ATOL, rtol=0)
    assert torch.equal(fresh, shared)
    assert (out.logprobs[~mask] == 0).all()
    if temperature == 0:
        assert (out.tokens == out.tokens[0]).all()   # greedy: the samples agree


def test_left_padded_batch_equals_each_row_alone(vlm):
    model, processor = vlm
    rows = [encode(processor, "<image>1+1=", [picture(6)]),
            encode(processor, "long prompt <image> 12+30=", [picture(7)])]
    responses = [[20, 101, 22, 23], [24, 25]]   # a sampled <image> id in a response: an ordinary token
    prompt_ids, prompt_mask = pad([r["input_ids"][0].tolist() for r in rows], processor.tokenizer.pad_token_id, "left")
    response_ids, action_mask = pad(responses, processor.tokenizer.pad_token_id, "right")
    pixels = torch.cat([r["pixel_values"] for r in rows])
    with torch.no_grad():
        batch = vlm_response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask, pixels)
        for i, (row, response) in enumerate(zip(rows, responses, strict=True)):
            ids = torch.tensor([response])
            alone = vlm_response_logprobs(model, row["input_ids"], row["attention_mask"], ids, torch.ones_like(ids),
                                          row["pixel_values"])
            torch.testing.assert_close(batch[i, :len(response)], alone[0], atol=LOGP_ATOL, rtol=0)
    assert (batch[1, 2:] == 0).all()


def test_init_model_vision_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from openk1.cli import main

    out = tmp_path / "m0"
    assert main(["init-model", "--out", str(out), "--set", "vision=true", "hidden=32", "layers=2", "heads=2",
                 "kv_heads=2", "intermediate=64"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["architecture"] == "LlavaForConditionalGeneration" and summary["image_tokens"] == TOKENS
    assert json.loads(capsys.readouterr().out)["parameters"] == summary["parameters"]
    assert is_vision(out) and (out / "model" / "processor_config.json").is_file()
    model, processor = load_vision_model(out)   # a run directory: its model/
    gen = vlm_generate(model, processor, "<image>", [picture(8)], max_new_tokens=4, seed=0)
    assert gen.tokens.shape[0] == 1 and 1 <= gen.tokens.shape[1] <= 4 and gen.features.shape == (1, TOKENS, 32)


def test_a_llava_interleave_layout_loads_and_scores_the_same_way(tmp_path: Path):
    """llava-hf/llava-interleave-qwen-*: the same class with a SigLIP tower (no CLS token:
    `full`, no additional token, layer -2) and a Qwen2 text model, built tiny here (no hub): the
    same functions load it, expand its images and score its rollouts."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config
    from transformers.models.siglip import SiglipImageProcessorPil, SiglipVisionConfig

    from openk1.models.vision import add_image_token

    tokenizer = char_tokenizer()
    image_id = add_image_token(tokenizer)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                image_size=24, patch_size=6)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, image_seq_length=16,
                         vision_feature_layer=-2, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    processor = LlavaProcessor(image_processor=SiglipImageProcessorPil(size={"height": 24, "width": 24}),
                               tokenizer=tokenizer, patch_size=6, vision_feature_select_strategy="full")
    save_vision_model(LlavaForConditionalGeneration(config), processor, tmp_path / "interleave")
    model, processor = load_vision_model(tmp_path / "interleave")
    assert model.config.text_config.model_type == "qwen2"
    enc = encode(processor, "<image>?", [picture(9)])
    assert int((enc["input_ids"] == image_id).sum()) == 16   # (24 / 6)^2, no CLS to drop
    out = vlm_generate(model.eval(), processor, "<image>?", [picture(9)], max_new_tokens=12, seed=1, samples=2)
    with torch.no_grad():
        fresh = vlm_response_logprobs(model, out.prompt_ids, out.prompt_mask, out.tokens, out.mask,
                                      pixel_values=out.pixel_values.repeat(2, 1, 1, 1))
    mask = out.mask.bool()
    torch.testing.assert_close(out.logprobs[mask], fresh[mask], atol=LOGP_ATOL, rtol=0)
