"""Defaults that work (issue 17 item 5): stage defaults are a pretrained checkpoint's; a model made
by `openk1 init-model` carries the settings a from-scratch model needs (models/tiny.py
RECOMMENDED) in config.json, every later model of its lineage keeps them, and the CLI fills the
keys an invocation leaves unset. Adam's state is fresh after each `reset_optimizer`."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from openk1 import cli
from openk1.data.io import write_jsonl
from openk1.models.io import recommended_settings
from openk1.models.tiny import RECOMMENDED
from openk1.rewards.base import Score
from openk1.stages import rl
from openk1.stages.dpo import DPOConfig
from openk1.stages.rl import RLConfig
from openk1.stages.sft import SFTConfig

from .test_rl import config as rl_config


def test_defaults_are_a_pretrained_checkpoints() -> None:
    sft, rl_cfg, dpo = SFTConfig(), RLConfig(), DPOConfig()
    assert (sft.optim.lr, sft.optim.lr_min, sft.epochs) == (2e-5, 2e-6, 3)
    assert (rl_cfg.optim.lr, rl_cfg.tau, rl_cfg.reset_optimizer) == (1e-6, 0.5, True)
    assert rl_cfg.sampling.max_new_tokens == 512 and rl_cfg.eval.sampling.max_new_tokens == 512
    assert dpo.optim.lr == 1e-6


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rec")
    assert cli.main(["init-model", "--out", str(root / "init"), "--set", "hidden=32", "layers=1",
                     "heads=2", "kv_heads=2", "intermediate=64"]) == 0
    rows = [{"prompt": f"{a}+{a}=", "response": f"\\boxed{{{2 * a}}}"} for a in range(8)]
    write_jsonl(root / "sft.jsonl", rows)
    return root


def saved(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_init_model_records_its_recommendations(made) -> None:
    config = json.loads((made / "init" / "model" / "config.json").read_text())
    assert config["openk1_recommended"] == RECOMMENDED
    assert recommended_settings(made / "init", "rl") == RECOMMENDED["rl"]   # a run dir resolves
    assert recommended_settings(made / "nowhere", "rl") == {}


def test_cli_fills_unset_keys_and_the_lineage_keeps_them(made, capsys) -> None:
    out = made / "sft"
    assert cli.main(["sft", "--model", str(made / "init"), "--data", str(made / "sft.jsonl"),
                     "--out", str(out), "--set", "max_steps=2", "batch_size=4"]) == 0
    cfg = saved(out)
    assert cfg["optim"]["lr"] == 3e-3 and cfg["optim"]["lr_min"] == 3e-4 and cfg["epochs"] == 10
    assert cfg["max_steps"] == 2   # the invocation's own value
    assert ("took the settings the model recommends: epochs=10, optim.lr=0.003, optim.lr_min=0.0003, "
            "optim.warmup_steps=30") in capsys.readouterr().err
    # the SFT model is of the same lineage: RL on it takes the tiny model's RL settings
    assert json.loads((out / "model" / "config.json").read_text())["openk1_recommended"] == RECOMMENDED


def test_a_given_section_is_not_mixed_with_a_recommended_one(made) -> None:
    out = made / "sft_lr"
    assert cli.main(["sft", "--model", str(made / "init"), "--data", str(made / "sft.jsonl"),
                     "--out", str(out), "--set", "max_steps=1", "optim.lr=1e-4"]) == 0
    cfg = saved(out)
    # optim.lr given: the section's default lr_min (2e-6), not the recommended 3e-4 > 1e-4
    assert (cfg["optim"]["lr"], cfg["optim"]["lr_min"], cfg["epochs"]) == (1e-4, 2e-6, 10)


def test_a_model_without_recommendations_gets_the_defaults(made, tiny_model_dir) -> None:
    plain = made / "checkpoint"   # as a pretrained checkpoint: no openk1_recommended
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["openk1_recommended"]
    (plain / "config.json").write_text(json.dumps(config))
    out = made / "sft_plain"
    assert cli.main(["sft", "--model", str(plain), "--data", str(made / "sft.jsonl"),
                     "--out", str(out), "--set", "max_steps=1"]) == 0
    cfg = saved(out)
    assert (cfg["optim"]["lr"], cfg["epochs"]) == (2e-5, 3)


class Recorder:
    """Wraps rl._iteration: the optimizer object and its Adam state at each iteration's start."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []

    def __call__(self, loop, *args, **kwargs):
        optimizer = loop.optimizer
        steps = [int(s["step"]) for s in optimizer.state.values() if "step" in s]
        self.seen.append((id(optimizer), len(optimizer.state), max(steps, default=0)))
        return self.inner(loop, *args, **kwargs)


def by_length(texts, problems, workers, rewards=None):
    """Reward 1 for an even-length response: every group has a signal."""
    return [Score(reward=float(len(t) % 2 == 0), verdict="x") for t in texts]


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "kept"])
def test_adam_state_is_fresh_after_a_reset(tmp_path, tiny_model_dir, monkeypatch, reset) -> None:
    recorder = Recorder(rl._iteration)
    monkeypatch.setattr(rl, "_iteration", recorder)
    rl.run(rl_config(tmp_path, tiny_model_dir, tmp_path / "run", iterations=3, eval_data="",
                     length_penalty_weight=0.0, reset_optimizer=reset), score=by_length)
    ids, sizes, steps = zip(*recorder.seen)
    if reset:   # a new AdamW each iteration, with no moments and no step count
        assert len(set(ids)) == 3 and sizes == (0, 0, 0) and steps == (0, 0, 0)
    else:       # one AdamW throughout: its step count carries over (4 steps per iteration)
        assert len(set(ids)) == 1 and sizes[0] == 0 and steps[0] == 0
        assert steps[1] > 0 and steps[2] > steps[1]
