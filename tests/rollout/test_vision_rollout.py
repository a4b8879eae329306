"""Rollouts, RL and eval with images on the tiny VLM (models/vlm.py, rollout/hf.py, stages/rl.py,
stages/eval.py; docs/vision.md "Rollouts, RL and eval with images"): prompts expanded as the
processor expands them, the rollout's log-probs = a fresh forward, image features computed once
per distinct image and reused, mixed text/image batches, partial rollouts, one RL update (the
vision tower moves iff not frozen), eval on image problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from openk1.data.images import ImageRef, load_image, pixel_values, resolve_image
from openk1.errors import OpenK1Error
from openk1.loop import Loop
from openk1.models.forward import response_logprobs
from openk1.models.io import load_model, processor_of
from openk1.models.tiny import TinyModelConfig, char_tokenizer
from openk1.models.vision import encode, save_vision_model, tiny_vlm, vlm_response_logprobs
from openk1.models.vlm import freeze_vision_tower, prompt_tokens, scatter
from openk1.optim import OptimConfig, make_optimizer
from openk1.rollout import partial
from openk1.rollout.engine import Request, requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.rollout.partial import PartialConfig, ReplayBuffer
from openk1.stages import rl
from openk1.stages.eval import EvalSettings, evaluate
from openk1.types import Problem

SMALL = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
TOKENS = 16   # one <image> at 32 px, patch 8: (32 / 8)^2 tokens (CLS dropped)

# Rollout log-probs against a fresh forward (fp32): the same derivation as tests/models/test_vision.py
# (one cached token a step vs one pass over [prompt | response], summation order only): |logp| ~
# log V = 4.6, eps 1.2e-7, ~300 accumulated ops -> sqrt(300) x 1.2e-7 x 5 ~ 1e-5 (measured 4.8e-7).
LOGP_ATOL = 1e-5


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    """Three tiny random PNGs (40x36: resized and centre-cropped by the processor), as ImageRefs."""
    folder = tmp_path_factory.mktemp("pictures")
    refs = []
    for seed in range(3):
        g = torch.Generator(device="cpu").manual_seed(seed)
        pixels = torch.randint(0, 256, (36, 40, 3), generator=g, dtype=torch.uint8, device="cpu")
        Image.fromarray(pixels.numpy(), "RGB").save(folder / f"p{seed}.png")
        refs.append(resolve_image(f"p{seed}.png", folder, f"p{seed}"))
    return refs


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vlm") / "model"
    save_vision_model(*tiny_vlm(SMALL, char_tokenizer(), seed=0), path)
    return path


@pytest.fixture()
def vlm(vlm_dir: Path):
    """(model, tokenizer, processor) as models/io.py load_model gives them (the processor on the tokenizer)."""
    model, tokenizer = load_model(vlm_dir)
    return model, tokenizer, processor_of(tokenizer)


class TowerCalls:
    """Counts vision-tower forward calls and the images they encoded (a forward hook)."""

    def __init__(self, model) -> None:
        self.calls = self.images = 0
        self.handle = model.model.vision_tower.register_forward_hook(self.hook)

    def hook(self, module, args, kwargs_or_out) -> None:
        self.calls += 1
        self.images += args[0].shape[0] if args else 0


def sampling(**kw) -> SamplingConfig:
    return SamplingConfig(**{"max_new_tokens": 12, "batch_size": 4} | kw)


def test_prompt_tokens_expand_as_the_processor(vlm, pictures):
    _, tokenizer, processor = vlm
    prompt = "a<image>b<image>c="
    ids = prompt_tokens(tokenizer, prompt, tuple(pictures[:2]))
    assert ids == encode(processor, prompt, [load_image(r) for r in pictures[:2]])["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == 2 * TOKENS
    assert prompt_tokens(tokenizer, "1+1=") == encode(processor, "1+1=", [])["input_ids"][0].tolist()
    with pytest.raises(OpenK1Error, match="1 <image> marker"):
        prompt_tokens(tokenizer, "a<image>b", tuple(pictures[:2]))
    text_tokenizer = char_tokenizer()
    with pytest.raises(OpenK1Error, match="vision-language model"):
        prompt_tokens(text_tokenizer, "a<image>b", tuple(pictures[:1]))


def test_rollout_logp_equals_a_fresh_forward(vlm, pictures):
    """Image, two-image and text prompts in one call (batch 4 < 9 rows: continuous batching joins
    rows): recorded log-probs = vision.vlm_response_logprobs with the images' pixels = the
    trainer's response_logprobs(images=...)."""
    model, tokenizer, processor = vlm
    engine = HFEngine(model, tokenizer, sampling(max_new_tokens=16))
    assert engine.forward_path.startswith("hf (vision-language model")
    images = [(pictures[0],), (pictures[0], pictures[1]), ()]
    rollout = engine.sample(requests_for(tokenizer, ["x<image>y=", "<image><image>2+2=", "1+1="], 3, 0, images))
    assert rollout.images == [i for i in images for _ in range(3)]
    mask = rollout.action_mask.bool()
    assert mask.sum() > 60
    pixels = pixel_values(processor, [r for row in rollout.images for r in row])   # [9 images, 3, 32, 32]
    with torch.no_grad():
        fresh = vlm_response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                      rollout.action_mask, pixel_values=pixels)
        trainer = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                    rollout.action_mask, images=rollout.images, processor=processor)
    assert torch.allclose(rollout.logp[mask], fresh[mask], atol=LOGP_ATOL)
    # the same ops on the same features (shared once per image instead of encoded per row)
    assert torch.allclose(trainer, fresh, atol=1e-6)
    assert (rollout.logp[~mask] == 0).all()


def test_features_once_per_image_and_reused(vlm, pictures):
    """k samples of a prompt -> 1 vision-tower call; a partial rollout's next segment in the same
    call -> no new one; in a later call -> none while the weights are unchanged, one after an
    optimizer step or load_weights."""
    model, tokenizer, _ = vlm
    engine = HFEngine(model, tokenizer, sampling(batch_size=2))   # k = 4 rows over two prefills
    tower = TowerCalls(model)
    first = engine.sample(requests_for(tokenizer, ["<image>1+1="], 4, seed=0, images=[(pictures[0],)]))
    assert (tower.calls, tower.images) == (1, 1)
    ids = first.prompt_ids[0][first.prompt_mask[0].bool()].tolist()
    prefix = tuple(first.response_ids[0, :3].tolist())
    fresh_and_continued = [Request(tuple(ids), (0, 9), images=(pictures[0],)),
                           Request(tuple(ids), (0, 0), prefix, images=(pictures[0],))]
    engine.sample(fresh_and_continued)                      # the same call, the same engine, weights as before
    assert (tower.calls, tower.images) == (1, 1)
    engine.sample(fresh_and_continued[1:])                  # a later call (next iteration), no update
    assert (tower.calls, tower.images) == (1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.model.multi_modal_projector.linear_1.weight.grad = torch.ones_like(
        model.model.multi_modal_projector.linear_1.weight)
    optimizer.step()                                         # an RL update: in place, no load_weights
    engine.sample(fresh_and_continued[1:])
    assert (tower.calls, tower.images) == (2, 2)
    engine.load_weights(model.state_dict())
    engine.sample(fresh_and_continued[1:])
    assert (tower.calls, tower.images) == (3, 3)
    assert (engine.features.calls, engine.features.encoded) == (3, 3)
    tower.handle.remove()


def test_mixed_batch_rows_equal_their_own_batches(vlm, pictures):
    """Text and image requests decode together: each row = the same request in a batch of its
    kind (tokens identical: a row depends on its own stream and logits only)."""
    model, tokenizer, _ = vlm
    engine = HFEngine(model, tokenizer, sampling(batch_size=3))
    text = requests_for(tokenizer, ["1+1=", "12+3="], 2, seed=5)
    image = requests_for(tokenizer, ["<image>7+8=", "<image>9="], 2, seed=6, images=[(pictures[1],), (pictures[2],)])
    mixed = [r for pair in zip(text, image) for r in pair]
    both = engine.sample(mixed)
    alone = {"text": engine.sample(text), "image": engine.sample(image)}
    assert both.images is not None and both.images[0] == () and both.images[1] == (pictures[1],)
    for kind, rows in (("text", range(0, 8, 2)), ("image", range(1, 8, 2))):
        for j, row in enumerate(rows):
            n = int(both.action_mask[row].sum())
            assert both.response_ids[row, :n].tolist() == alone[kind].response_ids[j, :n].tolist()
            assert torch.allclose(both.logp[row], alone[kind].logp[j, :both.logp.shape[1]], atol=LOGP_ATOL)
    assert alone["text"].images is None


def test_text_model_refuses_images(tiny, pictures):
    model, tokenizer = tiny
    with pytest.raises(OpenK1Error, match="vision-language model"):
        HFEngine(model, tokenizer, sampling()).sample([Request((1, 5), (0, 0), images=(pictures[0],))])


def test_sampled_image_token_is_an_ordinary_token(vlm, pictures):
    """Only a row's first n <image> ids take features: one in a prefix (or response) is embedded."""
    model, tokenizer, processor = vlm
    image_id = processor.image_token_id
    ids = torch.tensor([prompt_tokens(tokenizer, "<image>=", (pictures[0],)) + [5, image_id]], device="cpu")
    features = torch.randn(1, TOKENS, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0),
                           device="cpu")
    with torch.no_grad():
        embeds = scatter(model, ids, [features])
        plain = model.get_input_embeddings()(ids)
    assert torch.equal(embeds[0, -1], plain[0, -1]) and torch.equal(embeds[0, 1:1 + TOKENS], features[0])
    with pytest.raises(OpenK1Error, match="image tokens"):
        scatter(model, ids[:, :8], [features])


def problems_with_images(pictures: list[ImageRef]) -> list[Problem]:
    return [Problem(prompt="<image>1+1=", answer="2", images=(pictures[0],), id="a"),
            Problem(prompt="<image>2+2=", answer="4", images=(pictures[1],), id="b"),
            Problem(prompt="3+3=", answer="6", id="c")]


def test_partial_rollouts_carry_images(vlm, pictures):
    """rl.rollout_phase over iterations: segments continue with their images (features reused
    while the weights do not change), the whole responses = one go, images kept by to_rollout and
    loss_view, the buffer's JSON state round-trips, current_logp recomputes with the images."""
    model, tokenizer, processor = vlm
    problems = problems_with_images(pictures)
    cfg = rl.RLConfig(samples_per_prompt=2, sampling=sampling(max_new_tokens=12),
                      partial=PartialConfig(enabled=True, segment_tokens=4, max_segments=3))
    engine = HFEngine(model, tokenizer, cfg.sampling)
    tower = TowerCalls(model)
    buffer = ReplayBuffer()
    finished, _ = rl.rollout_phase(engine, buffer, problems, [0, 1, 2], cfg, iteration=0)
    assert (tower.calls, tower.images) == (1, 2) and buffer.groups
    state = json.loads(json.dumps(buffer.state_dict()))
    buffer = ReplayBuffer()
    buffer.load_state_dict(state)
    assert buffer.groups[0].trajectories[0].images in ((pictures[0],), (pictures[1],), ())
    for iteration in (1, 2):
        done, _ = rl.rollout_phase(engine, buffer, problems, [], cfg, iteration)
        finished += done
    assert not buffer.groups and len(finished) == 3 and tower.calls == 1   # no update: features reused
    finished.sort(key=lambda g: g.problem)
    rollout = partial.to_rollout(finished, tokenizer)
    assert rollout.images == [(pictures[0],)] * 2 + [(pictures[1],)] * 2 + [()] * 2
    one_go = HFEngine(model, tokenizer, cfg.sampling).sample(requests_for(
        tokenizer, [p.prompt for p in problems], 2, cfg.seed * 1_000_003, [p.images for p in problems]))
    assert rollout.response_ids.tolist() == one_go.response_ids[:, :rollout.response_ids.shape[1]].tolist()
    masked = partial.loss_view(rollout, "mask", tokenizer.pad_token_id)
    assert masked.images == rollout.images
    recomputed, gap = rl.current_logp(model, masked, 3, cfg, processor=processor)
    assert gap["logp/recomputed_gap_abs"] < LOGP_ATOL and recomputed.images == rollout.images
    tower.handle.remove()


@pytest.mark.parametrize("freeze", [False, True])
def test_rl_update_on_an_image_batch(vlm, pictures, freeze):
    """One RL step on an image batch: the language model and projector move; the vision tower
    moves iff `freeze_vision` is off (its gradient flows through the shared features)."""
    model, tokenizer, processor = vlm
    cfg = rl.RLConfig(samples_per_prompt=2, sampling=sampling(), freeze_vision=freeze, micro_batch_size=3,
                      optim=OptimConfig(lr=1e-3, warmup_steps=0))
    problems = problems_with_images(pictures)
    rollout = HFEngine(model, tokenizer, cfg.sampling).sample(requests_for(
        tokenizer, [p.prompt for p in problems], 2, 0, [p.images for p in problems]))
    if freeze:
        assert freeze_vision_tower(model) > 0
    parts = {"tower": model.model.vision_tower, "projector": model.model.multi_modal_projector,
             "language": model.model.language_model}
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in parts.items()}
    loop = Loop(None, model, make_optimizer(model, cfg.optim), 1.0, 1, model=model, tokenizer=tokenizer)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0], device="cpu")
    stats = rl.minibatch_step(loop, rollout, advantages, torch.arange(6, device="cpu"), cfg, cfg.optim.lr)
    assert torch.isfinite(torch.tensor(stats["loss"], device="cpu"))
    moved = {k: any(not torch.equal(p, b) for p, b in zip(m.parameters(), before[k])) for k, m in parts.items()}
    assert moved == {"tower": not freeze, "projector": True, "language": True}


def test_evaluate_on_image_problems(vlm, pictures):
    model, tokenizer, _ = vlm
    settings = EvalSettings(samples_per_prompt=2, sampling=sampling(max_new_tokens=6))
    result = evaluate(model, tokenizer, problems_with_images(pictures), settings, keep_samples=True)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["samples"] == 6 and len(result["rows"]) == 6
    text_only = evaluate(model, tokenizer, problems_with_images(pictures)[2:], settings)
    assert text_only["samples"] == 2


@pytest.mark.parametrize("freeze", [False, True])
def test_rl_stage_on_image_problems(tmp_path, vlm_dir, freeze):
    """`openk1 rl` end to end on a VLM: image and text problems, partial rollouts (groups carried
    in the checkpoint with their images), held-out eval with images; the saved model is a VLM
    whose vision tower moved iff not frozen, and a resumed run continues from the checkpoint."""
    from safetensors.torch import load_file

    from openk1.config import build
    from openk1.data.io import write_jsonl

    for color in ("red", "blue"):
        Image.new("RGB", (32, 32), color).save(tmp_path / f"{color}.png")
    rows = [{"prompt": f"<image>{i}+1=", "answer": str(i + 1), "images": [f"{c}.png"]}
            for i, c in enumerate(("red", "blue"))] + [{"prompt": "2+2=", "answer": "4"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    values = {"model": str(vlm_dir), "data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "train.jsonl"),
              "out": str(tmp_path / "run"), "iterations": 2, "prompts_per_iter": 3, "samples_per_prompt": 4,
              "eval_every": 2, "checkpoint_every": 1, "freeze_vision": freeze, "micro_batch_size": 4,
              "sampling": {"max_new_tokens": 48}, "partial": {"enabled": True, "segment_tokens": 8, "max_segments": 2},
              "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 4}},
              "optim": {"lr": 0.01, "warmup_steps": 0}, "length_penalty_weight": 1.0}
    summary = rl.run(build(rl.RLConfig, values))
    assert 0.0 <= summary["accuracy"] <= 1.0
    before, after = (load_file(str(d / "model.safetensors")) for d in (vlm_dir, tmp_path / "run" / "model"))
    tower = [k for k in before if "vision_tower" in k and "post_layernorm" not in k]   # (no gradient: module doc)
    assert tower and any(not torch.equal(before[k], after[k]) for k in tower) is not freeze
    assert any(not torch.equal(before[k], after[k]) for k in before if "multi_modal_projector" in k)
    resumed = rl.run(build(rl.RLConfig, values | {"iterations": 3, "resume": True}))   # its buffer: 3 image groups
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "update/steps" in r]
    assert resumed["iterations"] == 3 and [r["step"] for r in trained] == [2, 3]
    assert all(r["update/steps"] > 0 and r["partial/continued_frac"] > 0 for r in trained)


def test_rl_refuses_images_it_cannot_roll_out(tiny, vlm, pictures):
    model, _ = tiny
    cfg = rl.RLConfig()
    vllm = cfg.model_copy(update={"engine": "vllm"})
    for settings in (cfg, vllm):
        with pytest.raises(OpenK1Error, match="vision-language model"):
            rl.check_images(settings, problems_with_images(pictures), model)
        rl.check_images(settings, problems_with_images(pictures), vlm[0])   # a VLM: either engine
    rl.check_images(cfg, problems_with_images(pictures)[2:], model)   # text problems: any model
