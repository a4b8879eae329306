import pytest

from openk1.config import build, load, parse_overrides
from openk1.errors import OpenK1Error
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


def test_ill_typed_value_names_the_key():
    with pytest.raises(OpenK1Error, match=r"tau: .*got 'abc'"):
        build(RLConfig, {"tau": "abc"})
    with pytest.raises(OpenK1Error, match="logratio_level"):
        build(RLConfig, {"logratio_level": "word"})


def test_bad_override_syntax():
    with pytest.raises(OpenK1Error, match="key=value"):
        parse_overrides(["tau"])
