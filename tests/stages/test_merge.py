"""`openk1 merge`: weighted average over (sharded) safetensors, clear errors on mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openk1.cli import main
from openk1.errors import OpenK1Error
from openk1.models.io import load_model
from openk1.models.merge import merge_checkpoints, weight_map
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

SIZE = TinyModelConfig(hidden=16, layers=1, heads=2, kv_heads=2, intermediate=32)


def save_tiny(path: Path, seed: int, size: TinyModelConfig = SIZE, shard: str | None = None,
              tokenizer=None) -> Path:
    tokenizer = tokenizer or char_tokenizer()
    model = tiny_llama(size, tokenizer, seed=seed)
    model.save_pretrained(str(path), **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(str(path))
    return path


def params(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(path)[0].named_parameters())


def test_weighted_average_of_three_models(tmp_path):
    dirs = [save_tiny(tmp_path / f"m{i}", seed=i) for i in range(3)]
    summary = merge_checkpoints(dirs, [2.0, 1.0, 1.0], tmp_path / "out")
    assert summary["weights"] == [0.5, 0.25, 0.25]
    merged, inputs = params(tmp_path / "out"), [params(d) for d in dirs]
    for name, value in merged.items():
        expected = 0.5 * inputs[0][name] + 0.25 * inputs[1][name] + 0.25 * inputs[2][name]
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
    assert load_model(tmp_path / "out")[1].get_vocab() == char_tokenizer().get_vocab()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp folder left


def test_sharded_and_single_file_inputs(tmp_path):
    a = save_tiny(tmp_path / "a", seed=0, shard="4KB")
    b = save_tiny(tmp_path / "b", seed=1)
    assert len(set(weight_map(a).values())) > 1 and set(weight_map(b).values()) == {"model.safetensors"}
    summary = merge_checkpoints([a, b], [], tmp_path / "out")
    assert summary["shards"] == len(set(weight_map(a).values()))            # the first model's layout
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    merged, pa, pb = params(tmp_path / "out"), params(a), params(b)
    for name, value in merged.items():
        torch.testing.assert_close(value, 0.5 * pa[name] + 0.5 * pb[name], atol=1e-6, rtol=0)


def test_shape_mismatch_names_the_file_and_tensor(tmp_path):
    a = save_tiny(tmp_path / "a", seed=0)
    b = save_tiny(tmp_path / "b", seed=0, size=SIZE.model_copy(update={"intermediate": 48}))
    with pytest.raises(OpenK1Error,
                       match=r"b/model.safetensors: tensor 'model.layers.0.mlp.\w+_proj.weight' has shape"):
        merge_checkpoints([a, b], [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizer_and_tensor_name_mismatches(tmp_path):
    a = save_tiny(tmp_path / "a", seed=0)
    other = char_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<think>"]})
    b = save_tiny(tmp_path / "b", seed=1, tokenizer=other)
    with pytest.raises(OpenK1Error, match="b: tokenizer differs"):
        merge_checkpoints([a, b], [], tmp_path / "out")
    c = save_tiny(tmp_path / "c", seed=0, size=SIZE.model_copy(update={"layers": 2}))
    with pytest.raises(OpenK1Error, match="a: has no tensor 'model.layers.1.+, which .+/c has"):
        merge_checkpoints([a, c], [], tmp_path / "out")
    with pytest.raises(OpenK1Error, match="two or more"):
        merge_checkpoints([a], [], tmp_path / "out")


def test_cli_merge(tmp_path):
    a, b = save_tiny(tmp_path / "a", seed=0), save_tiny(tmp_path / "b", seed=1)
    assert main(["merge", "--set", f"models=[{a}, {b}]", "weights=[1, 3]", "--out", str(tmp_path / "run")]) == 0
    merged, pa, pb = params(tmp_path / "run" / "model"), params(a), params(b)
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(merged[name], 0.25 * pa[name] + 0.75 * pb[name], atol=1e-6, rtol=0)
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert main(["merge", "--set", f"models=[{a}]", "--out", str(tmp_path / "bad")]) == 2
