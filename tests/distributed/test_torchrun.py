"""torchrun/FSDP2 on CPU: 2 gloo ranks give the losses, gradients and weights of 1 process.

2 ranks sum the same terms in another order (each rank's share of the micro-batches, gloo's
reduce-scatter), so their results differ from one process's by rounding, which depends on the
CPU's kernels (AMX, AVX-512, AVX2). What that allows, per quantity:

- computed from the same weights (the first step's gradient; each step's loss and gradient
  norm): fp32 rounding, ~1e-7 relative per reduction;
- final weights after fp32 Adam: Adam's step lr * m / (sqrt(v) + eps) is about lr whatever the
  gradient's size, so on a coordinate whose gradient is at rounding level (terms that nearly
  cancel) the two runs may step apart by up to 2 * 1.165 * lr per step (1.165: the largest
  |m_hat / sqrt(v_hat)| for betas (0.9, 0.95), by Cauchy-Schwarz) on any CPU. No tighter
  per-weight bound holds (up to 5e-5 measured at lr 0.01 x 6 steps, 1.2e-5 on an EPYC) and that
  one cannot fail, so the weights are compared through the update (final - start) as a whole,
  which those few coordinates barely move;
- in fp64 the rounding (1e-16) is 8 orders below Adam's eps (1e-8): Adam's step, at most lr / eps
  times a change of the gradient, keeps it far below a step's size, and the weights can be
  compared one by one (rl.update's test runs both dtypes).
"""

from __future__ import annotations

import json

import pytest
import torch
import workers
from compare import FP64_REL, FP64_WEIGHTS, REL, UPDATE_REL, assert_metrics_close, rel_diff
from spawn import run_ranks

from openk1.data.io import write_jsonl
from openk1.report.run_dir import read_metrics

pytestmark = pytest.mark.distributed


def sft_values(model, data, out):
    """5 rows a step -> rank shares 3|2 in micro-batches of 2 (padding passes on rank 1)."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 10, "max_steps": 4,
            "batch_size": 5, "micro_batch_size": 2, "log_every": 1,
            "optim": {"lr": 0.01, "lr_min": 0.001, "warmup_steps": 1, "grad_clip": 0.5}}


def dpo_values(model, data, out):
    """5 pairs a step -> rank shares 3|2 in micro-batches of 2 (a padding pass on rank 1)."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 0, "max_steps": 3,
            "batch_size": 5, "micro_batch_size": 2, "log_every": 1, "beta": 0.5, "nll_weight": 0.1,
            "optim": {"lr": 0.0005, "lr_min": 0.0002, "warmup_steps": 0, "grad_clip": 0.5}}


def rm_values(model, data, out):
    """10 training rows, 5 a step -> rank shares 3|2 in micro-batches of 2 (a padding pass on
    rank 1); 2 epochs, held-out accuracy after each."""
    return {"model": str(model), "data": str(data), "out": str(out), "epochs": 2, "batch_size": 5,
            "micro_batch_size": 2, "log_every": 1, "heldout_fraction": 1 / 6, "max_tokens": 32,
            "optim": {"lr": 0.003, "lr_min": 0.001, "warmup_steps": 1, "grad_clip": 0.5}}


def rl_values(model, data, out):
    return {"model": str(model), "data": str(data), "eval_data": str(data), "out": str(out),
            "iterations": 2, "prompts_per_iter": 3, "samples_per_prompt": 4, "eval_every": 2,
            "checkpoint_every": 2, "micro_batch_size": 2, "sampling": {"max_new_tokens": 6},
            "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 6}},
            "length_penalty_weight": 1.0,   # a random model is never right: length gives the signal
            "optim": {"lr": 0.002, "warmup_steps": 0},
            "lean": False}   # FSDP's sharded parameters take HF's forward (models/lean.py refuses them)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, fixed_batch, tmp_path_factory):
    """Every 2-rank run of this module, in one spawn of 2 gloo processes."""
    root = tmp_path_factory.mktemp("two_ranks")
    sft_rows = [{"prompt": f"{a}+1=", "response": f"\\boxed{{{a + 1}}}" + "!" * (a % 3)}
                for a in range(10)]
    write_jsonl(root / "sft.jsonl", sft_rows)
    rl_rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math", "difficulty": 1}
               for a in range(1, 5) for b in range(1, 4)]
    write_jsonl(root / "rl.jsonl", rl_rows)
    write_jsonl(root / "dpo.jsonl", [{"prompt": f"{a}+1=", "chosen": f"\\boxed{{{a + 1}}}",
                                      "rejected": f"{a}+1 is \\boxed{{{a + 2}}}" + "!" * a} for a in range(7)])
    write_jsonl(root / "rm.jsonl", [{"prompt": f"{a}+1=", "answer": str(a + 1), "response": str(a + 1 + a % 2),
                                     "label": 1 - a % 2} for a in range(12)])
    calls = [("rl_update", (str(tiny_model_dir), str(fixed_batch), str(root / "update.pt"))),
             ("sft_run", (sft_values(tiny_model_dir, root / "sft.jsonl", root / "sft"),)),
             ("dpo_run", (dpo_values(tiny_model_dir, root / "dpo.jsonl", root / "dpo"),)),
             ("dpo_killed_and_resumed", (dpo_values(tiny_model_dir, root / "dpo.jsonl", root / "dpo_resumed"),)),
             ("rm_run", (rm_values(tiny_model_dir, root / "rm.jsonl", root / "rm"),)),
             ("rl_run", (rl_values(tiny_model_dir, root / "rl.jsonl", root / "rl"), str(root)))]
    run_ranks(workers.several, 2, calls)
    return root


@pytest.fixture(scope="module")
def fixed_batch(tiny_model_dir, tmp_path_factory):
    """One global rollout (5 prompts x k=4 = 20 rows) with random advantages."""
    from openk1.models.io import load_model
    from openk1.rollout.hf import HFEngine, SamplingConfig
    from openk1.types import Rollout

    model, tokenizer = load_model(tiny_model_dir)
    engine = HFEngine(model, tokenizer, SamplingConfig(max_new_tokens=8))
    rollout = engine.generate([f"{a}+{a + 1}=" for a in range(1, 6)], 4, seed=3)
    # responses cut to lengths of 1 to 8 (the random model rarely says EOS), so that token_mean
    # and seq_mean_token_mean weigh the rows differently
    lengths = torch.minimum(rollout.lengths, 1 + torch.arange(20) % 8)
    mask = (torch.arange(rollout.action_mask.shape[1])[None] < lengths[:, None]).long()
    rollout = Rollout(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids * mask, mask,
                      rollout.logp * mask, rollout.stop_reason)
    advantages = torch.randn(20, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("batch") / "batch.pt"
    torch.save({"rollout": rollout, "advantages": advantages}, path)
    return path


@pytest.mark.parametrize("dtype", workers.DTYPES, ids=["fp32", "fp64"])
def test_rl_update_two_ranks_equals_one_process(tiny_model_dir, fixed_batch, two_ranks, dtype):
    """3 mini-batches of 7, 7, 6 rows -> rank shares 4|3, 4|3, 3|3 in micro-batches of 3: rank 1
    runs weight-0 padding passes; token_mean needs the all-reduced token count. Both dtypes: the
    first gradient and each step's loss and gradient norm; the weights through their update in
    fp32, one by one in fp64."""
    from openk1.models.io import load_model

    one = workers.rl_update_results(str(tiny_model_dir), str(fixed_batch), dtype)
    two = torch.load(two_ranks / "update.pt", weights_only=False)[dtype]
    start = load_model(tiny_model_dir, dtype)[0].state_dict()
    rel = REL if dtype == torch.float32 else FP64_REL
    for aggregation in workers.AGGREGATIONS:
        r1, r2 = one[aggregation], two[aggregation]
        assert r1["metrics"]["update/steps"] == r2["metrics"]["update/steps"] == 6
        assert len(r1["steps"]) == len(r2["steps"]) == 6
        assert r1["grad"].keys() == r2["grad"].keys() and r1["grad"]
        assert r1["weights"].keys() == r2["weights"].keys() == start.keys()
        grad = rel_diff(r2["grad"], r1["grad"])          # step 1, before clipping: same weights
        assert grad <= rel, f"{aggregation}: first gradient {grad:.1e} apart"
        assert all(abs(s["loss"]) > 1e-3 for s in r1["steps"])   # real losses, not vacuous zeros
        steps = assert_metrics_close(r1["steps"], r2["steps"], ("loss", "grad_norm"), rel=rel)
        update = rel_diff(r2["weights"], r1["weights"], start)
        worst = max(float((r1["weights"][k] - r2["weights"][k]).abs().max()) for k in start)
        print(f"{aggregation} {dtype}: first gradients {grad:.1e}, step metrics {steps:.1e}, "
              f"updates {update:.1e}, weights {worst:.1e} apart")
        if dtype == torch.float32:
            assert update <= UPDATE_REL, f"{aggregation}: updates {update:.1e} apart"
        else:
            assert worst <= FP64_WEIGHTS, f"{aggregation}: weights {worst:.1e} apart"


def assert_trained_alike(start_dir, one, two, moved):
    """The 1-process model moved from the start by more than `moved` (it trained), and the
    2-rank model's update (final - start) is the 1-process one's within UPDATE_REL in norm."""
    from openk1.models.io import load_model

    w1, w2, start = (load_model(d)[0].state_dict() for d in (one / "model", two / "model", start_dir))
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > moved
    update = rel_diff(w2, w1, start)
    assert update <= UPDATE_REL, f"updates {update:.1e} apart"
    print(f"{two.name}: updates {update:.1e} apart")


def test_sft_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path):
    from openk1.config import build
    from openk1.stages import sft

    sft.run(build(sft.SFTConfig, sft_values(tiny_model_dir, two_ranks / "sft.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "sft"
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4]            # rank 0 alone wrote the metrics
    assert all(r1["tokens"] == r2["tokens"] > 0 for r1, r2 in zip(m1, m2))
    print(f"sft: metrics {assert_metrics_close(m1, m2, ('loss', 'grad_norm')):.1e} apart")
    assert_trained_alike(tiny_model_dir, one, two, moved=1e-3)


def test_one_rank_torchrun_takes_the_fsdp2_path(tiny_model_dir, two_ranks, tmp_path):
    """`--nproc_per_node 1` joins a process group of one and trains the FSDP2 copy; the result
    is one plain process's within FSDP's rounding."""
    from spawn import run_ranks

    run_ranks(workers.sft_one_rank, 1, sft_values(tiny_model_dir, two_ranks / "sft.jsonl", tmp_path / "fsdp1"))
    plain = tmp_path / "plain"
    from openk1.config import build
    from openk1.stages import sft

    sft.run(build(sft.SFTConfig, sft_values(tiny_model_dir, two_ranks / "sft.jsonl", plain)))
    m1, m2 = read_metrics(plain / "metrics.jsonl"), read_metrics(tmp_path / "fsdp1" / "metrics.jsonl")
    print(f"sft 1 rank: metrics {assert_metrics_close(m1, m2, ('loss', 'grad_norm')):.1e} apart")
    assert_trained_alike(tiny_model_dir, plain, tmp_path / "fsdp1", moved=1e-3)


def test_dpo_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path, monkeypatch):
    from openk1.config import build
    from openk1.models.lean import LeanModel
    from openk1.stages import dpo

    # the ranks' sharded parameters take HF's forward (LeanModel.of refuses DTensors): so does the
    # reference, or the two differ by the lean forward's rounding, which Adam amplifies
    monkeypatch.setattr(LeanModel, "of", classmethod(lambda cls, *args, **kwargs: None))
    dpo.run(build(dpo.DPOConfig, dpo_values(tiny_model_dir, two_ranks / "dpo.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "dpo"
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3]               # rank 0 alone wrote the metrics
    assert all(abs(r["loss"]) > 1e-3 for r in m1)
    # not reward/accuracy: the sign of margins that are 0 but for rounding at step 1
    worst = assert_metrics_close(m1, m2, ("loss", "grad_norm", "reward/margin"))
    print(f"dpo: metrics {worst:.1e} apart")
    assert_trained_alike(tiny_model_dir, one, two, moved=1e-4)


def test_two_rank_run_resumes_exactly_with_adams_full_state(two_ranks):
    """Under FSDP2 the checkpoint holds Adam's full state (gathered to rank 0); resumed on 2
    ranks it is sharded again: the same weights and metrics, bit for bit, as the run that was
    never interrupted."""
    from openk1.models.io import load_model

    whole, resumed = two_ranks / "dpo", two_ranks / "dpo_resumed"
    state = torch.load(resumed / "checkpoints" / "step_000002" / "optimizer.pt", weights_only=False)
    assert len(state["state"]) > 0 and all("exp_avg" in s for s in state["state"].values())
    a, b = (load_model(d / "model")[0].state_dict() for d in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    m1, m2 = read_metrics(whole / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3] and m1 == m2


def test_rm_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path):
    """The classifier on the shared loop under 2 ranks: the same losses, gradient norms and
    held-out accuracy as one process, and the same update of the weights."""
    from openk1.config import build
    from openk1.rewards.reward_model import load_reward_model
    from openk1.stages import rm

    cfg = build(rm.RMTrainConfig, rm_values(tiny_model_dir, two_ranks / "rm.jsonl", tmp_path / "one"))
    rm.run(cfg)
    one, two = tmp_path / "one", two_ranks / "rm"
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [1, 2, 3, 4]            # rank 0 alone wrote the metrics
    assert all(abs(r["loss"]) > 1e-3 for r in m1)
    print(f"rm: metrics {assert_metrics_close(m1, m2, ('loss', 'grad_norm')):.1e} apart")
    assert [r.get("heldout_accuracy") for r in m1] == [r.get("heldout_accuracy") for r in m2]
    w1, w2 = (dict(load_reward_model(d / "model")[0].state_dict()) for d in (one, two))
    torch.manual_seed(cfg.seed)                            # the head's initialisation, as rm.run draws it
    start = dict(load_reward_model(tiny_model_dir)[0].state_dict())
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-4
    update = rel_diff(w2, w1, start)
    assert update <= UPDATE_REL, f"rm: updates {update:.1e} apart"


def test_rl_stage_on_two_ranks_equals_one_process(tiny_model_dir, two_ranks, tmp_path):
    """`openk1 rl` under 2 ranks: each rank samples half the sequences (per-sequence random
    streams, so the same tokens), rank 0 alone writes, and the metrics and final weights are
    those of one process."""
    from openk1.config import build
    from openk1.models.io import load_model
    from openk1.stages import rl

    rl.run(build(rl.RLConfig, rl_values(tiny_model_dir, two_ranks / "rl.jsonl", tmp_path / "one")))
    one, two = tmp_path / "one", two_ranks / "rl"
    ranks = [torch.load(two_ranks / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["syncs"] for r in ranks] == [2, 2]              # one weight sync per iteration
    assert all(r["sharded"] for r in ranks)                    # each rank trains half the weights
    saved = load_model(two / "model")[0].state_dict()
    for name, value in saved.items():                          # both ranks roll out the saved model
        assert torch.equal(ranks[0]["weights"][name], value)
        assert torch.equal(ranks[1]["weights"][name], value)
    w1 = load_model(one / "model")[0].state_dict()
    start = load_model(tiny_model_dir)[0].state_dict()
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1) > 1e-4   # it trained
    update = rel_diff(saved, w1, start)
    assert update <= UPDATE_REL, f"updates {update:.1e} apart"
    print(f"rl: updates {update:.1e} apart")
    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in m2] == [r["step"] for r in m1] == [0, 1, 2]  # eval, 2 iters (+ eval)
    train = [(r1, r2) for r1, r2 in zip(m1, m2) if "reward/mean" in r1]
    # the last iteration takes its 4 steps (an earlier one without signal, all advantages 0, may
    # skip its mini-batches: rl.update); 1 and 2 processes take the same (metrics below)
    assert train[-1][1]["update/steps"] == 4 and all(r2["update/skipped"] == 0 for _, r2 in train)
    # iteration 2 samples from weights Adam moved apart (by <= 5e-5 measured): the same tokens
    # unless a uniform draw falls that close to a CDF boundary (~1e-3 a run, not seen)
    assert all(r1.keys() == r2.keys() for r1, r2 in zip(m1, m2))
    # update/opmd/* describe the last micro-batch only (rank 0's under torchrun)
    worst = assert_metrics_close(m1, m2, skip=("time/", "throughput/", "update/opmd/"))
    print(f"rl: metrics {worst:.1e} apart")
    assert (two / "checkpoints/step_000002/model/config.json").exists()
    summary = json.loads((two / "summary.json").read_text())
    assert summary["iterations"] == 2 and ranks[1]["summary"]["iterations"] == 2
