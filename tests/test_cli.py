"""CLI conventions: flags, --set, one-line errors with exit code 2, outputs written atomically."""

import json
import subprocess
import sys

import pytest

from openk1.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "openk1.cli", *args], check=False, capture_output=True, text=True)


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for command in ("init-model", "sft", "rl", "eval", "score", "demo"):
        assert command in out


def test_init_model_sizes_and_reloads(tmp_path):
    out = tmp_path / "m"
    assert main(["init-model", "--out", str(out), "--set", "hidden=32", "layers=2",
                 "heads=2", "kv_heads=2", "intermediate=64"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left


@pytest.mark.parametrize("args, message", [
    (["rl", "--set", "tau=abc"], "tau"),
    (["rl", "--set", "no_such_key=1"], "no_such_key: unknown key"),
    (["eval", "--model", "/nonexistent", "--data", "x.jsonl"], "not a model directory"),
])
def test_errors_are_one_line_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_row_error_names_file_row_field(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    result = run_cli("eval", "--model", str(tiny_model_dir), "--data", str(data))
    assert result.returncode == 2
    assert f"{data}: row 2: missing field 'answer'" in result.stderr


def test_debug_shows_traceback():
    result = run_cli("rl", "--set", "tau=abc", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_score_writes_reward_for_every_row(tmp_path):
    rows = [{"prompt": "1+1=", "answer": "2", "type": "math", "response": "so \\boxed{2}", "k": 1},
            {"prompt": "2+2=", "answer": "4", "type": "math", "response": "\\boxed{5}"},
            {"prompt": "2+2=", "answer": "4", "type": "math", "response": "no answer here"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--input", str(src), "--out", str(dst), "--set", "workers=2"]) == 0
    scored = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [s["reward"] for s in scored] == [1.0, 0.0, 0.0]
    assert [s["verdict"] for s in scored] == ["correct", "wrong", "no_answer"]
    assert scored[0]["k"] == 1 and scored[0]["response"] == rows[0]["response"]
