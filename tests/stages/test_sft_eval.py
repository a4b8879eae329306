"""SFT learns a tiny dataset; eval reports the training verifier's accuracy."""

import json

from openk1.config import build
from openk1.data.io import write_jsonl
from openk1.stages import eval as eval_stage
from openk1.stages import sft


def test_sft_fits_and_eval_scores(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"{a}+1=", "response": f"\\boxed{{{a + 1}}}"} for a in range(4)]
    write_jsonl(tmp_path / "sft.jsonl", rows)
    problems = [{"prompt": f"{a}+1=", "answer": str(a + 1), "difficulty": 1} for a in range(4)]
    write_jsonl(tmp_path / "p.jsonl", problems)
    cfg = build(sft.SFTConfig, {"model": str(tiny_model_dir), "data": str(tmp_path / "sft.jsonl"),
                                "out": str(tmp_path / "run"), "epochs": 150, "batch_size": 4,
                                "optim": {"lr": 0.01, "lr_min": 0.001, "warmup_steps": 5}})
    summary = sft.run(cfg)
    assert summary["steps"] == 150 and summary["final_loss"] < 0.05
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 150
    ev = build(eval_stage.EvalConfig, {"model": summary["model"], "data": str(tmp_path / "p.jsonl"),
                                       "out": str(tmp_path / "ev"),
                                       "eval": {"samples_per_prompt": 1,
                                                "sampling": {"temperature": 0.0, "max_new_tokens": 12}}})
    result = eval_stage.run(ev)
    assert result["accuracy"] == 1.0
    samples = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert [s["response"] for s in samples] == [r["response"] for r in rows]
    assert result["mean_tokens"] == sum(len(r["response"]) + 1 for r in rows) / 4   # + EOS


def test_sft_max_steps_and_response_mask(tmp_path, tiny_model_dir):
    """The loss counts response tokens only: a prompt token never enters the mean."""
    import torch

    from openk1.data.batching import encode_pairs
    from openk1.models.io import load_model

    model, tokenizer = load_model(tiny_model_dir)
    batch = encode_pairs(tokenizer, ["1+1=", "12+345="], ["2", "357"], 64)
    assert batch["action_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]  # response + EOS
    loss, tokens = sft.sft_loss(model, batch)
    assert tokens == 6
    longer = encode_pairs(tokenizer, ["1+1=" * 5, "12+345="], ["2", "357"], 64)
    loss_long_prompt, _ = sft.sft_loss(model, longer)
    assert torch.isfinite(loss) and torch.isfinite(loss_long_prompt)
