"""torchrun/FSDP2 on the tiny VLM (distributed/fsdp.py `vision_units`, `VisionAgreement`): 2 gloo
ranks train a LLaVA with SFT on image rows and with RL on image problems, text rows mixed in, and
give the losses and weights of one process.

The tolerances are test_torchrun.py's (compare.py derives them): the same-weights metrics (loss,
gradient norm, evaluation loss) within REL, the weights through their update within UPDATE_REL.
The vision tower and projector add terms to the same sums (their gradients summed over ranks
like the language model's), nothing that rounds differently in kind. Text rows are mixed in so
that some forward has images on one rank and none on the other: that rank runs the vision units
on the blank stand-in (counted below), or the ranks' collectives would not pair up.
"""

from __future__ import annotations

import pytest
import torch
import workers
from compare import REL, UPDATE_REL, assert_metrics_close, rel_diff
from PIL import Image
from spawn import run_ranks

from openk1.data.io import write_jsonl
from openk1.report.run_dir import read_metrics

pytestmark = pytest.mark.distributed

COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 160, 0)}


def sft_values(model, data, out):
    """6 rows (4 with an image, 2 text) a pass, 5 a step -> rank shares 3|2 in micro-batches of 2
    (a padding pass on rank 1); the evaluation loss (no gradient) after the last step."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 10, "max_steps": 4,
            "batch_size": 5, "micro_batch_size": 2, "log_every": 1, "eval_loss_data": str(data),
            "optim": {"lr": 0.01, "lr_min": 0.001, "warmup_steps": 1, "grad_clip": 0.5}}


def rl_values(model, data, out):
    """3 of 5 problems (3 with an image) an iteration x 4 samples; mini-batches of 6 rows -> 3|3,
    micro-batches of 2; held-out eval of an image and a text problem on rank 0."""
    return {"model": str(model), "data": str(data), "eval_data": str(data), "out": str(out),
            "iterations": 2, "prompts_per_iter": 3, "samples_per_prompt": 4, "eval_every": 2,
            "checkpoint_every": 2, "micro_batch_size": 2, "sampling": {"max_new_tokens": 6},
            "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 4}},
            "length_penalty_weight": 1.0,   # a random model is never right: length gives the signal
            "optim": {"lr": 0.002, "warmup_steps": 0}, "lean": False}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tiny VLM (hidden 32, 2 layers; the vision tower and projector of `tiny_vlm`), three
    colored squares, SFT rows and RL problems with and without images."""
    from openk1.models.tiny import TinyModelConfig, char_tokenizer
    from openk1.models.vision import save_vision_model, tiny_vlm

    root = tmp_path_factory.mktemp("vlm_torchrun")
    size = TinyModelConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
    save_vision_model(*tiny_vlm(size, char_tokenizer(), seed=0), root / "model")
    for name, color in COLORS.items():
        Image.new("RGB", (8, 8), color).save(root / f"{name}.png")
    sft = [{"prompt": "What color is <image>?", "response": name, "images": [f"{name}.png"]} for name in COLORS]
    sft.append({"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"},
                                                          {"type": "text", "text": "Name it."}]},
                             {"role": "assistant", "content": "red"}]})
    sft += [{"prompt": "2+2=", "response": "4"}, {"prompt": "3+1=", "response": "4!"}]
    write_jsonl(root / "sft.jsonl", sft)
    problems = [{"prompt": f"<image>{i}+1=", "answer": str(i + 1), "images": [f"{name}.png"]}
                for i, name in enumerate(COLORS)]
    problems += [{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}]
    write_jsonl(root / "rl.jsonl", problems)
    return root


@pytest.fixture(scope="module")
def two_ranks(root):
    """The 2-rank runs in one spawn of 2 gloo processes (SFT and RL with their forwards counted,
    SFT interrupted and resumed)."""
    calls = [("counting_vision_forwards", ("sft_run", (sft_values(root / "model", root / "sft.jsonl", root / "sft"),),
                                           str(root / "sft_forwards"))),
             ("counting_vision_forwards", ("rl_run", (rl_values(root / "model", root / "rl.jsonl", root / "rl"),
                                                      str(root)), str(root / "rl_forwards"))),
             ("sft_killed_and_resumed", (sft_values(root / "model", root / "sft.jsonl", root / "sft_resumed"),))]
    run_ranks(workers.several, 2, calls)
    return root


def forwards(path):
    """Both ranks' forward counts, summed: {"images", "stand_in", "text"}."""
    ranks = [torch.load(f"{path}.rank{r}", weights_only=False) for r in range(2)]
    return {key: ranks[0][key] + ranks[1][key] for key in ranks[0]}


def moved(start, end, part):
    return any(not torch.equal(start[k], end[k]) for k in start if part in k)


def test_sft_on_image_rows_two_ranks_equals_one_process(two_ranks, tmp_path):
    from openk1.config import build
    from openk1.models.io import load_model
    from openk1.stages import sft

    sft.run(build(sft.SFTConfig, sft_values(two_ranks / "model", two_ranks / "sft.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "sft"
    counted = forwards(two_ranks / "sft_forwards")
    assert counted["images"] > 0 and counted["stand_in"] > 0, counted     # the mixed case ran
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4]            # rank 0 alone wrote the metrics
    assert all(r1["tokens"] == r2["tokens"] > 0 for r1, r2 in zip(m1, m2))
    assert "eval_loss" in m2[-1]
    worst = assert_metrics_close(m1, m2, ("loss", "grad_norm"))
    worst = max(worst, assert_metrics_close(m1[-1:], m2[-1:], ("eval_loss",)))
    model, _ = load_model(two / "model")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    w1, w2, start = (load_model(d)[0].state_dict() for d in (one / "model", two / "model", two_ranks / "model"))
    for part in ("vision_tower.encoder", "multi_modal_projector", "language_model.layers"):
        assert moved(start, w1, part) and moved(start, w2, part), part
    update = rel_diff(w2, w1, start)
    print(f"vlm sft: metrics {worst:.1e}, updates {update:.1e} apart; forwards {counted}")
    assert update <= UPDATE_REL, f"updates {update:.1e} apart"


def test_two_rank_image_run_resumes_exactly(two_ranks):
    """A 2-rank SFT run on image rows resumed from its step-2 checkpoint ends with the weights
    and metrics of the run that was never interrupted, bit for bit. Adam's state was gathered in
    full and sharded again; the tower's `post_layernorm` (features are taken before it) never has
    a gradient and so has no state in it, as in one process."""
    from openk1.models.io import load_model

    whole, resumed = two_ranks / "sft", two_ranks / "sft_resumed"
    state = torch.load(resumed / "checkpoints" / "step_000002" / "optimizer.pt", weights_only=False)
    names = [name for name, _ in load_model(two_ranks / "model")[0].named_parameters()]
    assert sorted(state["state"]) == sorted(n for n in names if "post_layernorm" not in n)
    a, b = (load_model(d / "model")[0].state_dict() for d in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    adam = [torch.load(d / "checkpoints" / "step_000004" / "optimizer.pt", weights_only=False)["state"]
            for d in (whole, resumed)]
    assert adam[0].keys() == adam[1].keys() == state["state"].keys()
    assert all(torch.equal(adam[0][n][k], adam[1][n][k]) for n in adam[0] for k in adam[0][n])
    m1, m2 = read_metrics(whole / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4] and m1 == m2


def test_rl_on_image_problems_two_ranks_equals_one_process(two_ranks, tmp_path):
    """`openk1 rl` on 2 ranks with image and text problems: each rank samples half the sequences,
    trains its shards of the VLM and rolls out the synced full model; the metrics and the final
    weights are those of one process."""
    from openk1.config import build
    from openk1.models.io import load_model
    from openk1.stages import rl

    rl.run(build(rl.RLConfig, rl_values(two_ranks / "model", two_ranks / "rl.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "rl"
    counted = forwards(two_ranks / "rl_forwards")
    assert counted["images"] > 0 and counted["stand_in"] > 0, counted     # the mixed case ran
    ranks = [torch.load(two_ranks / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["syncs"] for r in ranks] == [2, 2] and all(r["sharded"] for r in ranks)
    saved = load_model(two / "model")[0].state_dict()
    for name, value in saved.items():                          # both ranks roll out the saved model
        assert torch.equal(ranks[0]["weights"][name], value) and torch.equal(ranks[1]["weights"][name], value)
    w1, start = (load_model(d)[0].state_dict() for d in (one / "model", two_ranks / "model"))
    for part in ("vision_tower.encoder", "multi_modal_projector", "language_model.layers"):
        assert moved(start, w1, part) and moved(start, saved, part), part
    update = rel_diff(saved, w1, start)
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [0, 1, 2]  # eval, 2 iterations (+ eval)
    assert all(r1.keys() == r2.keys() for r1, r2 in zip(m1, m2))
    worst = assert_metrics_close(m1, m2, skip=("time/", "throughput/", "update/opmd/"), rel=REL)
    print(f"vlm rl: metrics {worst:.1e}, updates {update:.1e} apart; forwards {counted}")
    assert update <= UPDATE_REL, f"updates {update:.1e} apart"
