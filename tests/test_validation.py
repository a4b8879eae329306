"""Every bad value is a one-line error naming where it is (issue 16.3): config ranges, data rows
located by their physical line, malformed code tests rejected at load time."""

import json
from pathlib import Path

import pytest

from openk1.config import build, merge, parse_overrides, read_yaml
from openk1.data.io import load_problems, load_sft_rows
from openk1.errors import OpenK1Error
from openk1.stages.code_tests import CodeTestsStageConfig, load_code_rows
from openk1.stages.curate import CurateConfig
from openk1.stages.demo import DemoConfig, preset
from openk1.stages.dpo import DPOConfig, load_pairs
from openk1.stages.eval import EvalConfig
from openk1.stages.init_model import InitModelConfig
from openk1.stages.long2short import Long2ShortConfig
from openk1.stages.merge import MergeConfig
from openk1.stages.pretrain import PretrainConfig
from openk1.stages.rl import RLConfig
from openk1.stages.rm import RMTrainConfig, load_labelled
from openk1.stages.score import ScoreConfig
from openk1.stages.sft import SFTConfig

PRESETS = Path(__file__).resolve().parents[1] / "src" / "openk1" / "presets"

# (config class, --set overrides, what the one-line message must say)
BAD_VALUES = [
    (SFTConfig, ["batch_size=0"], r"^config: batch_size: Input should be greater than 0 \(got 0\)$"),
    (SFTConfig, ["batch_size=-4"], r"^config: batch_size: .*greater than 0 \(got -4\)$"),
    (SFTConfig, ["optim.lr_min=0.1"], r"^config: optim\.lr_min \(0\.1\) must be <= optim\.lr"),
    (SFTConfig, ["stages=[{max_seq_len: 0}]"], r"^config: stages\.0: max_seq_len must be > 0"),
    (SFTConfig, ["stages=[{lr: {lr_max: 0.001, lr_min: 0.01}}]"], r"^config: stages\.0\.lr: lr_min"),
    (PretrainConfig, ["stages=[{sources: [{path: a, weight: 0}]}]"], r"stages\.0\.sources\.0\.weight"),
    (RLConfig, ["optim.lr=-1"], r"^config: optim\.lr: Input should be greater than 0 \(got -1\)$"),
    (RLConfig, ["samples_per_prompt=-1"], r"^config: samples_per_prompt: .*greater than 0"),
    (RLConfig, ["prompts_per_iter=0"], r"^config: prompts_per_iter: .*greater than 0 \(got 0\)$"),
    (RLConfig, ["sampling.temperature=0"], r"^config: sampling\.temperature must be > 0 for RL"),
    (RLConfig, ["sampling.temperature=-1"], r"^config: sampling\.temperature: .*greater than or equal to 0"),
    (RLConfig, ["sampling.top_p=1.5"], r"^config: sampling\.top_p: .*less than or equal to 1 \(got 1\.5\)$"),
    (RLConfig, ["optim.betas=[0.9, 1.0]"], r"^config: optim\.betas\.1: Input should be less than 1"),
    (RLConfig, ["eval_every=0"], r"^config: eval_every: "),
    (RLConfig, ["baseline=log_z", "tau=0"], r"^config: baseline log_z needs tau > 0"),
    (RLConfig, ["sampler.floor=2"], r"^config: sampler\.floor: "),
    (RLConfig, ["vllm.gpu_memory_utilization=1.5"], r"^config: vllm\.gpu_memory_utilization: "),
    (EvalConfig, ["eval.samples_per_prompt=0"], r"^config: eval\.samples_per_prompt: .*greater than 0"),
    (EvalConfig, ["eval.sampling.max_new_tokens=0"], r"^config: eval\.sampling\.max_new_tokens: "),
    (InitModelConfig, ["hidden=-128"], r"^config: hidden: Input should be greater than 0 \(got -128\)$"),
    (InitModelConfig, ["hidden=130"], r"^config: hidden \(130\) must be a multiple of heads \(4\)$"),
    (InitModelConfig, ["hidden=12"], r"^config: hidden / heads \(3\) must be even"),
    (InitModelConfig, ["heads=4", "kv_heads=3"], r"^config: heads \(4\) must be a multiple of kv_heads"),
    (CurateConfig, ["dedup.threshold=1.5"], r"^config: dedup\.threshold: .*less than or equal to 1"),
    (CurateConfig, ["hack.sampling.top_p=2"], r"^config: hack\.sampling\.top_p: "),
    (CurateConfig, ["dedup.bands=30"], r"^config: dedup: num_perm \(128\) must be a multiple of bands"),
    (CurateConfig, ["balance.targets={math: -1}"], r"^config: balance\.targets\.math: "),
    (DPOConfig, ["beta=0"], r"^config: beta: "),
    (RMTrainConfig, ["heldout_fraction=1"], r"^config: heldout_fraction: .*less than 1"),
    (RMTrainConfig, ["optim.lr=1e-7"], r"^config: optim\.lr_min \(1e-06\) must be <= optim\.lr"),
    (CodeTestsStageConfig, ["min_agree=11"], r"^config: min_agree \(11\) must be <= max_solutions"),
    (MergeConfig, ["weights=[1, -1]"], r"^config: weights\.1: "),
    (Long2ShortConfig, ["samples.samples_per_prompt=0"], r"^config: samples\.samples_per_prompt: "),
    (ScoreConfig, ["workers=-1"], r"^config: workers: "),
    (DemoConfig, ["task.slip_rate=1.5"], r"^config: task\.slip_rate: "),
    (DemoConfig, ["task.min_difficulty=4", "task.max_difficulty=2"], r"^config: task: min_difficulty"),
]


@pytest.mark.parametrize("cls, overrides, message", BAD_VALUES,
                         ids=[f"{c.__name__}:{' '.join(o)}" for c, o, _ in BAD_VALUES])
def test_bad_config_value_is_one_line_naming_the_key(cls, overrides, message):
    with pytest.raises(OpenK1Error, match=message) as info:
        build(cls, parse_overrides(overrides))
    assert "\n" not in str(info.value)


def test_bad_value_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    from openk1.cli import main

    assert main(["init-model", "--out", str(tmp_path / "m"), "--set", "hidden=-128"]) == 2
    err = capsys.readouterr().err.strip()
    assert "hidden: Input should be greater than 0 (got -128)" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m").exists()


# every preset file: the config it is read into
PRESET_CONFIGS = {
    "demo.yaml": lambda: [build(DemoConfig, preset(False))],
    "demo_quick.yaml": lambda: [build(DemoConfig, preset(True))],
    "demo_plain.yaml": lambda: [
        build(DemoConfig, merge(preset(quick), read_yaml(PRESETS / "demo_plain.yaml")))
        for quick in (False, True)],
    "long2short_demo.yaml": lambda: [build(Long2ShortConfig, read_yaml(PRESETS / "long2short_demo.yaml"))],
    "long2short_rl.yaml": lambda: [build(RLConfig, read_yaml(PRESETS / "long2short_rl.yaml"))],
    "pretrain_demo.yaml": lambda: [build(PretrainConfig, read_yaml(PRESETS / "pretrain_demo.yaml"))],
    "pretrain_k15.yaml": lambda: [build(PretrainConfig, read_yaml(PRESETS / "pretrain_k15.yaml"))],
    "sft_k15.yaml": lambda: [build(SFTConfig, read_yaml(PRESETS / "sft_k15.yaml"))],
    "gpu_1x_1.5b.yaml": lambda: [build(RLConfig, read_yaml(PRESETS / "gpu_1x_1.5b.yaml"))],
    "gpu_8x_7b.yaml": lambda: [build(RLConfig, read_yaml(PRESETS / "gpu_8x_7b.yaml"))],
}


def test_every_preset_still_validates():
    assert sorted(p.name for p in PRESETS.glob("*.yaml")) == sorted(PRESET_CONFIGS)
    for name, check in PRESET_CONFIGS.items():
        assert check(), name


# ---------------------------------------------------------------------------------------------
# Data files

def write_lines(path: Path, lines: list) -> Path:
    """Rows as JSON lines; a str is written as it is (blank lines, broken JSON)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "caf\xe9", "answer": "3"}\n')
    with pytest.raises(OpenK1Error, match=r"data\.jsonl: line 3: not UTF-8 text \(byte 0xe9") as info:
        load_problems(path)
    assert str(path) in str(info.value)


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "1+1=", "answer": "2"}\n')
    assert load_problems(path)[0].prompt == "1+1="


GOOD_PROBLEM = {"prompt": "1+1=", "answer": "2"}


@pytest.mark.parametrize("load, good, bad, message", [
    (load_problems, GOOD_PROBLEM, {"answer": "2"}, "missing field 'prompt'"),
    (load_sft_rows, {"prompt": "a", "response": "b"}, {"prompt": "a"}, "missing field 'response'"),
    (load_pairs, {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"},
     "missing field 'rejected'"),
    (load_labelled, {"prompt": "q", "answer": "1", "response": "1", "label": 1},
     {"prompt": "q", "answer": "1", "label": 1}, "missing field 'response'"),
    (load_code_rows, {"prompt": "p", "solutions": [], "generator": "g"}, {"prompt": "p", "generator": "g"},
     "missing field 'solutions'"),
    (load_problems, GOOD_PROBLEM, "{oops", "not valid JSON"),
], ids=["problems", "sft", "dpo", "rm", "code-tests", "json"])
def test_row_errors_name_the_physical_line(tmp_path, load, good, bad, message):
    # line 1 good, line 2 blank, line 3 whitespace only, line 4 good, line 5 bad
    path = write_lines(tmp_path / "rows.jsonl", [good, "", "   ", good, bad])
    with pytest.raises(OpenK1Error, match=rf"rows\.jsonl: line 5: {message}"):
        load(path)


def test_ids_stay_row_numbers_when_lines_are_blank(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [GOOD_PROBLEM, "", GOOD_PROBLEM])
    assert [p.id for p in load_problems(path)] == ["1", "2"]


def test_packed_stream_names_the_line_after_shuffling(tmp_path):
    from openk1.data.mixture import PackedStream
    from openk1.data.packing import Example

    path = write_lines(tmp_path / "t.jsonl", [{"text": "a"}, "", {"text": "bad"}, {"text": "b"}])

    def encode(row):
        if row["text"] == "bad":
            raise OpenK1Error("field 'text' is bad")
        return Example([1, 2], [1, 1])

    stream = PackedStream(str(path), encode, 8, True, "truncate", seed=0, shuffle_buffer=10)
    with pytest.raises(OpenK1Error, match=r"t\.jsonl: line 3: field 'text' is bad"):
        stream.next()


def test_curate_and_decontamination_sets_name_the_line(tmp_path):
    from openk1.stages import curate

    data = write_lines(tmp_path / "in.jsonl", [GOOD_PROBLEM, "", {"prompt": 3, "answer": "2"}])
    cfg = CurateConfig(data=str(data), out=str(tmp_path / "o"))
    with pytest.raises(OpenK1Error, match=r"in\.jsonl: line 3: field 'prompt' must be str"):
        curate.run(cfg)
    evals = write_lines(tmp_path / "eval.jsonl", ["", {"answer": "1"}])
    cfg = CurateConfig(dedup={"decontaminate": [str(evals)]})
    with pytest.raises(OpenK1Error, match=r"eval\.jsonl: line 2: missing field 'prompt'"):
        curate.curate([GOOD_PROBLEM], cfg)


def test_score_names_the_line_and_refuses_a_folder_as_out(tmp_path):
    from openk1.stages import score

    data = write_lines(tmp_path / "s.jsonl", [{**GOOD_PROBLEM, "response": "2"}, "", GOOD_PROBLEM])
    with pytest.raises(OpenK1Error, match=r"s\.jsonl: line 3: missing field 'response'"):
        score.run(ScoreConfig(data=str(data), out=str(tmp_path / "scored.jsonl")))
    with pytest.raises(OpenK1Error, match="folder") as info:
        score.run(ScoreConfig(data=str(data), out=str(tmp_path)))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Code rows: the loader rejects what the code verifier would score `bad_test`

CODE = {"prompt": "Add.", "type": "code"}


@pytest.mark.parametrize("tests, message", [
    ("[{'input': '1', 'output': '1'}]", r"field 'tests' must be a list of tests, got str"),
    ({"input": "1", "output": "1"}, r"field 'tests' must be a list of tests, got dict"),
    ([{"input": "1 2", "output": "3"}, {"input": "2 2"}], r"tests\[1\]: missing 'output'"),
    ([{"input": "1 2", "output": None}], r"tests\[0\]: missing 'output'"),
    ([{"call": "f(1)"}], r"tests\[0\]: missing 'expected'"),
    (["1 2", "3"], r"tests\[0\]: must be an object with input/output or call/expected, got str"),
    ([["1 2", "3"]], r"tests\[0\]: must be an object .*got list"),
    ([{"stdin": "1", "stdout": "1"}], r"tests\[0\]: needs 'input' and 'output' .* or 'call' and 'expected'"),
])
def test_malformed_code_tests_are_rejected_at_load_time(tmp_path, tests, message):
    path = write_lines(tmp_path / "code.jsonl", [GOOD_PROBLEM, "", {**CODE, "tests": tests}])
    with pytest.raises(OpenK1Error, match=rf"code\.jsonl: line 3: {message}"):
        load_problems(path)


def test_well_formed_code_rows_load_and_verifier_agrees(tmp_path):
    from openk1.rewards.code import bad_test_reason, classify_test, verify_code

    tests = [{"input": "1 2", "output": "3"}, {"call": "add(1, 2)", "expected": "3"},
             {"input": None, "output": None, "call": "add(2, 2)", "expected": 4}]   # a Parquet struct
    path = write_lines(tmp_path / "code.jsonl", [{**CODE, "tests": tests}])
    (problem,) = load_problems(path)
    assert problem.tests == tuple(tests)
    assert [classify_test(t) for t in tests] == ["stdio", "call", "call"]
    assert all(bad_test_reason(t) is None for t in tests)
    # the verifier keeps its own verdict for a malformed test that never went through the loader
    from openk1.types import Problem

    bad = Problem("Add.", "", "code", tests=({"input": "1 2"},))
    assert verify_code("```python\nprint(3)\n```", bad).verdict == "bad_test"
