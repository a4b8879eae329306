"""CLI conventions: flags per command, --set examples that work, one-line errors with exit
code 2 that leave the output untouched, outputs written atomically."""

import json
import subprocess
import sys

import pytest

from openk1.cli import COMMANDS, load_stage, main, parser
from openk1.config import build, parse_overrides
from openk1.data.io import write_jsonl

COMMON = {"--config", "--out", "--set", "--overwrite", "--debug", "-h", "--help"}
# command -> the flags it takes besides COMMON (what its config reads)
EXPECTED_FLAGS = {
    "init-model": set(), "merge": set(), "demo": {"--quick"},
    "score": {"--data"}, "code-tests": {"--model", "--data"},
    "eval": {"--model", "--data"}, "long2short": {"--model", "--data"}, "rm": {"--model", "--data", "--resume"},
    "pretrain": {"--model", "--data", "--resume"}, "sft": {"--model", "--data", "--resume"},
    "longcot": {"--model", "--data", "--resume"}, "curate": {"--model", "--data", "--resume"},
    "dpo": {"--model", "--data", "--resume"}, "rl": {"--model", "--data", "--resume", "--ray"},
}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "openk1.cli", *args], check=False,
                          capture_output=True, text=True)


def subcommands():
    top = parser()
    (sub,) = [a for a in top._actions if a.dest == "command"]
    return sub.choices


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_takes_only_the_flags_it_uses(command):
    flags = {o for a in subcommands()[command]._actions for o in a.option_strings}
    assert flags == COMMON | EXPECTED_FLAGS[command]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_commands_set_example_is_valid_for_it(command):
    (action,) = [a for a in subcommands()[command]._actions if a.dest == "overrides"]
    example = action.help.split("e.g. ")[1]
    assert example == COMMANDS[command].example
    _, config_cls = load_stage(command)
    base = {"quick": False} if command == "demo" else {}
    build(config_cls, {**base, **parse_overrides(example.split())})   # raises if not valid


def test_bad_row_error_names_file_line_field(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2="}\n')
    result = run_cli("eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "e"))
    assert result.returncode == 2
    assert result.stderr == f"openk1 eval: error: {data}: line 3: missing field 'answer'\n"
    assert not (tmp_path / "e").exists()


def test_debug_shows_traceback():
    result = run_cli("rl", "--set", "tau=abc", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_score_writes_reward_for_every_row(tmp_path, capsys):
    rows = [{"prompt": "1+1=", "answer": "2", "type": "math", "response": "so \\boxed{2}", "k": 1},
            {"prompt": "2+2=", "answer": "4", "type": "math", "response": "\\boxed{5}"},
            {"prompt": "2+2=", "answer": "4", "type": "math", "response": "no answer here"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--data", str(src), "--out", str(dst), "--set", "workers=2"]) == 0
    scored = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [s["reward"] for s in scored] == [1.0, 0.0, 0.0]
    assert [s["verdict"] for s in scored] == ["correct", "wrong", "no_answer"]
    assert scored[0]["k"] == 1 and scored[0]["response"] == rows[0]["response"]
    assert main(["score", "--data", str(src), "--out", str(dst)]) == 2       # exists
    assert "exists; replace it with --overwrite" in capsys.readouterr().err
    assert main(["score", "--data", str(src), "--out", str(dst), "--overwrite"]) == 0


def test_eval_writes_the_run_directory_and_shows_progress(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}])
    out = tmp_path / "e"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--set", "eval.samples_per_prompt=2", "eval.sampling.max_new_tokens=4"]) == 0
    err = capsys.readouterr().err          # the bar counts samples: 2 problems x 2
    assert "eval: 100%" in err and "4/4 [" in err
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "summary.json",
                                               "samples.jsonl", "results.md", "tb"}
    summary = json.loads((out / "summary.json").read_text())
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["eval/accuracy"] == summary["accuracy"] and summary["samples"] == 4
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4


def test_merge_says_when_it_renormalises(tmp_path, tiny_model_dir, capsys):
    assert main(["merge", "--out", str(tmp_path / "a"), "--set",
                 f"models=[{tiny_model_dir}, {tiny_model_dir}]", "weights=[3, 1]"]) == 0
    captured = capsys.readouterr()
    assert "merge: weights [3.0, 1.0] sum to 4; renormalised to [0.75, 0.25]" in captured.err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["weights_renormalised"] is True
    assert main(["merge", "--out", str(tmp_path / "b"), "--set",
                 f"models=[{tiny_model_dir}, {tiny_model_dir}]", "weights=[0.5, 0.5]"]) == 0
    assert "renormalised" not in capsys.readouterr().err


# ------------------------------------------------------------ bad invocations, as a table


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """Inputs and a finished run for the table below; every case must leave it as it was."""
    root = tmp_path_factory.mktemp("world")
    write_jsonl(root / "problems.jsonl", [{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(4)])
    write_jsonl(root / "sft.jsonl", [{"prompt": f"{a}+1=", "response": str(a + 1)} for a in range(4)])
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    write_jsonl(root / "code.jsonl", [{"prompt": "p", "type": "code", "tests": "print(1)"}])
    (root / "bad.yaml").write_text("tau: [unclosed\n")
    (root / "scored.jsonl").write_text("keep\n")
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("mine")
    assert main(["rl", "--model", str(tiny_model_dir), "--data", str(root / "problems.jsonl"),
                 "--out", str(root / "run"), "--set", "iterations=1", "prompts_per_iter=2",
                 "samples_per_prompt=2", "sampling.max_new_tokens=4", "eval_at_start=false"]) == 0
    return root


BAD = [  # (argv with {M} = model, {W} = the world folder; what the error names)
    (["sft", "--model", "{M}", "--data", "{W}/sft.jsonl", "--set", "batch_size=0"], "batch_size"),
    (["sft", "--model", "{M}", "--data", "{W}/sft.jsonl", "--set", "batch_size=-4"], "batch_size"),
    (["sft", "--model", "{M}", "--data", "{W}/sft.jsonl", "--set", "optim.lr=-1"], "optim.lr"),
    (["rl", "--model", "{M}", "--data", "{W}/problems.jsonl", "--set", "samples_per_prompt=-1"],
     "samples_per_prompt"),
    (["rl", "--model", "{M}", "--data", "{W}/problems.jsonl", "--set", "prompts_per_iter=0"],
     "prompts_per_iter"),
    (["eval", "--model", "{M}", "--data", "{W}/problems.jsonl", "--set", "eval.samples_per_prompt=0"],
     "eval.samples_per_prompt"),
    (["init-model", "--set", "hidden=-128"], "hidden"),
    (["eval", "--model", "{M}", "--data", "{W}/latin1.jsonl"], "latin1.jsonl: line 1: not UTF-8"),
    (["score", "--data", "{W}/problems.jsonl", "--out", "."], "this is a folder"),
    (["score", "--data", "{W}/problems.jsonl", "--out", "{W}/scored.jsonl"], "exists"),
    (["rl", "--model", "{M}"], "rl: needs --data"),
    (["sft", "--data", "{W}/sft.jsonl"], "sft: needs --model"),
    (["rl", "--model", "{M}", "--data", "{W}/problems.jsonl", "--out", "{W}/run"], "already holds a run"),
    (["rl", "--model", "{M}", "--data", "{W}/problems.jsonl", "--out", "{W}/notes"], "not an openk1 run"),
    (["rl", "--out", "{W}/notes", "--resume"], "holds no run"),
    (["rl", "--out", "{W}/run", "--resume", "--set", "tau=0.2"], "cannot change tau"),
    (["rl", "--out", "{W}/run", "--resume", "--set", "iterations=0"], "iterations"),
    (["rl", "--resume"], "--resume needs --out"),
    (["rl", "--model", "{M}", "--data", "{W}/code.jsonl"], "field 'tests'"),
    (["rl", "--model", "{M}", "--data", "{W}/missing.jsonl"], "missing.jsonl: file not found"),
    (["rl", "--model", "{W}/notes", "--data", "{W}/problems.jsonl"], "not a model directory"),
    (["rl", "--config", "{W}/bad.yaml"], "not valid YAML"),
    (["rl", "--set", "no_such_key=1"], "no_such_key: unknown key"),
    (["rl", "--set", "tau"], "expected key=value"),
    (["rl", "--set", "tau=abc"], "tau"),
    (["merge", "--set", "models=[{M}]"], "two or more models"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:1] + a[-1:]) for a, _ in BAD])
def test_bad_invocations_exit_2_with_one_line_and_write_nothing(argv, message, world, tiny_model_dir,
                                                                 tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)          # a default --out would land here
    argv = [a.replace("{M}", str(tiny_model_dir)).replace("{W}", str(world)) for a in argv]
    before = snapshot(world), snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith(f"openk1 {argv[0]}: error: ") and len(err.strip().splitlines()) == 1
    assert (snapshot(world), snapshot(tmp_path)) == before


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_errors_are_one_line_exit_2_in_a_fresh_process(tmp_path):
    result = run_cli("rl", "--set", "tau=abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_flag_for_a_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["merge", "--data", "x.jsonl"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --data" in capsys.readouterr().err
