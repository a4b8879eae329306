import re

import pytest

from openk1.config import build, load, parse_overrides
from openk1.errors import OpenK1Error
from openk1.stages.curate import CurateConfig
from openk1.stages.eval import EvalConfig
from openk1.stages.rl import RLConfig


def test_overrides_are_nested_and_typed():
    assert parse_overrides(["rl.tau=0.1", "a.b.c=true", "name=x", "n=3"]) == {
        "rl": {"tau": 0.1}, "a": {"b": {"c": True}}, "name": "x", "n": 3}


def test_yaml_then_set_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tau: 0.5\nsampling:\n  max_new_tokens: 9\n  temperature: 0.7\n")
    cfg = load(RLConfig, str(path), ["sampling.max_new_tokens=11"], out="o", model=None)
    assert cfg.tau == 0.5 and cfg.sampling.max_new_tokens == 11
    assert cfg.sampling.temperature == 0.7 and cfg.out == "o" and cfg.model == ""


def test_unknown_key_names_the_key():
    with pytest.raises(OpenK1Error, match=r"sampling\.max_tokens: unknown key"):
        build(RLConfig, {"sampling": {"max_tokens": 3}})


@pytest.mark.parametrize("cls, old, new", [
    (EvalConfig, "eval.max_new_tokens", "eval.sampling.max_new_tokens"),
    (RLConfig, "eval.temperature", "eval.sampling.temperature"),
    (CurateConfig, "hack.max_new_tokens", "hack.sampling.max_new_tokens"),
    (CurateConfig, "difficulty.batch_size", "difficulty.sampling.batch_size"),
])
def test_sampling_keys_live_under_sampling_in_every_command(cls, old, new):
    # one vocabulary: eval, curate.hack and curate.difficulty nest sampling like rl does
    with pytest.raises(OpenK1Error, match=f"^config: {re.escape(old)}: unknown key$"):
        load(cls, None, [f"{old}=7"])
    cfg = load(cls, None, [f"{new}=7"])
    section = getattr(cfg, old.split(".")[0]).sampling
    assert getattr(section, old.split(".")[1]) == 7


def test_a_partial_sampling_section_keeps_the_section_defaults():
    assert load(EvalConfig, None, ["eval.sampling.temperature=0"]).eval.sampling.max_new_tokens == 512
    curate = load(CurateConfig, None, ["hack.sampling.top_p=0.5", "difficulty.sampling.top_p=0.5"])
    assert (curate.hack.sampling.max_new_tokens, curate.difficulty.sampling.max_new_tokens) == (32, 1024)


def test_ill_typed_value_names_the_key():
    with pytest.raises(OpenK1Error, match=r"tau: .*got 'abc'"):
        build(RLConfig, {"tau": "abc"})
    with pytest.raises(OpenK1Error, match="logratio_level"):
        build(RLConfig, {"logratio_level": "word"})


def test_bad_override_syntax():
    with pytest.raises(OpenK1Error, match="key=value"):
        parse_overrides(["tau"])
