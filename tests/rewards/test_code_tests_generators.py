"""k1.5 test generation, the model's half (report §2.3.5): special-judge problems excluded, the
min_tests rule, the seeded random choice of references, code extraction from a model's answer,
candidates tried in order, and a real tiny model trained to write a working generator."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.errors import OpenK1Error
from openk1.rewards.code_tests import (
    GENERATOR_PROMPT,
    CodeTestsConfig,
    _decide,
    choose_solutions,
    extract_generator,
    generate_tests,
    generate_tests_for_problems,
    needs_special_judge,
)
from openk1.sandbox import INSTALL_HINT, Limits
from openk1.stages.code_tests import load_code_rows
from openk1.types import Problem

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason=INSTALL_HINT)
FAST = Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
ZERO = "input()\nprint(0)\n"
GEN = "import random\nprint(random.randint(1, 1000), random.randint(1, 1000))\n"
FIVE = "import sys\nprint(int(sys.argv[1]) % 5, 1)\n"  # seeds 0..9 -> 5 distinct inputs
PROBLEM = "Print a + b for two integers a, b (1 <= a, b <= 1000) given on one line."


def _cfg(**kw: Any) -> CodeTestsConfig:
    base = {"num_inputs": 10, "run_limits": FAST, "generator_limits": FAST, "workers": 2}
    return CodeTestsConfig(**{**base, **kw})


def _never(requests: list[str], k: int) -> list[str]:
    raise AssertionError("the model was asked for a generator")


# ---------------------------------------------------------------- special judge


def test_special_judge_and_checker_mean_the_same() -> None:
    assert needs_special_judge({"special_judge": True})
    assert needs_special_judge({"checker": "print('ok')"})
    assert not needs_special_judge({"special_judge": False, "checker": "  "})
    assert not needs_special_judge({"checker": None})
    assert not needs_special_judge({})


def test_special_judge_rows_are_excluded_before_any_run(refuse_sandbox_runs) -> None:
    refuse_sandbox_runs("a special-judge problem")
    rows: list[dict[str, Any]] = [
        {"prompt": "any order", "solutions": [ADD] * 3, "generator": GEN, "special_judge": True},
        {"prompt": "floats", "solutions": [ADD] * 3, "checker": "import sys\n", "id": "c"},
        {"prompt": "no generator", "solutions": [ADD], "special_judge": True},  # no model asked
    ]
    kept, report = generate_tests_for_problems(rows, _cfg(), writer=_never)
    assert kept == [] and report["reasons"] == {"special_judge": 3}
    first, second, _ = report["per_problem"]
    assert (first["row"], first["valid_tests"], first["kept"]) == (0, 0, False)
    assert (second["id"], second["reason"]) == ("c", "special_judge")
    assert second["generator_source"] is None


def test_loader_accepts_special_judge_rows_without_generator(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"prompt": "p", "solutions": [ADD], "checker": "c"},
                       {"prompt": "p", "solutions": [ADD], "special_judge": True}])
    assert len(load_code_rows(path)) == 2
    write_jsonl(path, [{"prompt": "p", "solutions": [ADD], "generator": GEN,
                        "special_judge": "yes"}])
    with pytest.raises(OpenK1Error, match=r"line 1: field 'special_judge' must be bool"):
        load_code_rows(path)
    write_jsonl(path, [{"prompt": "p", "solutions": [ADD]}])
    with pytest.raises(OpenK1Error, match=r"rows\.jsonl: line 1: missing field 'generator'"):
        load_code_rows(path)
    assert load_code_rows(path, need_generator=False)[0]["prompt"] == "p"  # a model writes it


# ---------------------------------------------------------------- min_tests


def test_too_few_tests_comes_after_the_empty_cases() -> None:
    counts = {"solutions": 3, "unique_inputs": 5, "valid_tests": 5, "min_passing": 3,
              "solutions_passing": 3}
    assert _decide(counts, min_tests=5) == "kept"
    assert _decide(counts, min_tests=6) == "too_few_tests"  # 5 valid < 6
    assert _decide({**counts, "solutions_passing": 2}, min_tests=6) == "too_few_tests"
    assert _decide({**counts, "valid_tests": 0}, min_tests=6) == "no_valid_tests"
    assert _decide({**counts, "unique_inputs": 0}, min_tests=6) == "no_inputs"


@needs_bwrap
def test_problem_needs_min_tests_valid_tests() -> None:
    problem = Problem("add", "", "code", solutions=(ADD,) * 3)
    # 10 runs, 5 distinct inputs ("0 1" .. "4 1"), all agreed on: 5 valid tests
    _, report = generate_tests(problem, FIVE, _cfg(min_tests=10))
    assert (report["valid_tests"], report["min_tests"]) == (5, 10)
    assert report["reason"] == "too_few_tests"
    assert report["kept"] is False and report["attempt"] is None
    enough, report = generate_tests(problem, FIVE, _cfg(min_tests=5))
    assert (report["valid_tests"], report["reason"], report["attempt"]) == (5, "kept", 1)
    assert [t["input"] for t in enough.tests] == [f"{i} 1\n" for i in range(5)]
    # fewer runs than min_tests: every run must give a valid test (min(40, 5) = 5)
    _, report = generate_tests(problem, FIVE, _cfg(num_inputs=5))
    assert (report["min_tests"], report["valid_tests"], report["reason"]) == (5, 5, "kept")


@needs_bwrap
def test_too_few_tests_is_counted_in_the_summary() -> None:
    rows = [{"prompt": "a", "solutions": [ADD] * 3, "generator": FIVE},
            {"prompt": "b", "solutions": [ADD] * 3, "generator": GEN}]
    kept, report = generate_tests_for_problems(rows, _cfg(min_tests=8), writer=_never)
    assert report["reasons"] == {"too_few_tests": 1, "kept": 1}
    assert len(kept) == 1 and kept[0]["prompt"] == "b" and kept[0]["generator"] == GEN


# ---------------------------------------------------------------- random references


def test_references_are_drawn_at_random_seeded_by_seed_and_row() -> None:
    drawn = choose_solutions(15, 10, seed=0, row=3)
    assert drawn == sorted(random.Random("0/3").sample(range(15), 10))  # the documented rule
    assert drawn == choose_solutions(15, 10, seed=0, row=3)  # stable across calls
    assert drawn != choose_solutions(15, 10, seed=1, row=3)  # another seed, another draw
    assert drawn != choose_solutions(15, 10, seed=0, row=4)  # another row, another draw
    assert drawn != list(range(10))  # not the first ten
    assert len(set(drawn)) == 10 and all(0 <= i < 15 for i in drawn)
    assert choose_solutions(4, 10, seed=7, row=0) == [0, 1, 2, 3]  # all of them, no draw


def _dropped_pair(seed: int, row: int) -> list[int]:
    """The two of 12 references the draw leaves out, both among the first ten."""
    left_out = sorted(set(range(12)) - set(choose_solutions(12, 10, seed, row)))
    assert len(left_out) == 2
    return left_out


@needs_bwrap
def test_random_choice_decides_which_references_run() -> None:
    # 12 references, the two wrong ones exactly where the draw leaves them out: the draw runs 10
    # right ones (kept, 10 pass); the first ten would have run both wrong ones (8 of 10 pass).
    seed, row = next((s, 0) for s in range(100) if max(_dropped_pair(s, 0)) < 10)
    wrong = _dropped_pair(seed, row)
    solutions = tuple(ZERO if i in wrong else ADD for i in range(12))
    problem = Problem("add", "", "code", solutions=solutions)
    cfg = _cfg(num_inputs=3, seed=seed)
    _, report = generate_tests(problem, GEN, cfg, row=row)
    assert report["solution_indices"] == choose_solutions(12, 10, seed, row)
    assert (report["solutions"], report["solutions_passing"], report["kept"]) == (10, 10, True)
    first_ten = Problem("add", "", "code", solutions=solutions[:10])
    _, report = generate_tests(first_ten, GEN, cfg, row=row)
    assert (report["solutions_passing"], report["reason"]) == (8, "too_few_passing")


# ---------------------------------------------------------------- code from a model's answer


@pytest.mark.parametrize("answer, code", [
    ("Sure.\n```python\nprint(1)\n```\nThat prints one input.", "print(1)\n"),
    ("print(2)\n", "print(2)\n"),  # no fence: the whole text
    ("```text\nnotes\n```\n```py\nprint(3)\n```\n```python\nprint(4)\n```", "print(3)\n"),
    ("```python3 gen.py\nprint(5)\n```", "print(5)\n"),
    ("```\nnotes\n```\n```python\nprint(7)\n```", "print(7)\n"),  # python before untagged
    ("```bash\nls\n```\n```\nprint(6)\n```", "print(6)\n"),  # no python fence: untagged one
    ("```bash\nls\n```", "```bash\nls\n```"),  # no usable fence: the whole text
])
def test_generator_code_is_extracted_from_the_answer(answer: str, code: str) -> None:
    assert extract_generator(answer) == code


def test_generator_prompt_holds_the_problem_and_a_working_example() -> None:
    request = GENERATOR_PROMPT.format(problem=PROBLEM)
    assert request.count(PROBLEM) == 1 and "cyaron" in request.lower()
    assert extract_generator(request).startswith("from cyaron import randint\n")


# ---------------------------------------------------------------- candidates in order


@needs_bwrap
def test_candidates_are_tried_in_order_until_one_has_enough_tests() -> None:
    asked: list[tuple[list[str], int]] = []
    answers = {"first": ["```python\nraise SystemExit(1)\n```", f"```python\n{FIVE}```",
                         f"```python\n{GEN}```", "never tried"],
               "second": ["```python\nraise SystemExit(1)\n```"] * 4}

    def writer(requests: list[str], k: int) -> list[str]:
        asked.append((requests, k))
        return answers["first"] + answers["second"]

    rows = [{"prompt": "first", "solutions": [ADD] * 3, "id": "f"},
            {"prompt": "own", "solutions": [ADD] * 3, "generator": GEN},
            {"prompt": "second", "solutions": [ADD] * 3, "generator": ""}]
    kept, report = generate_tests_for_problems(rows, _cfg(min_tests=8), writer=writer)
    assert asked == [([GENERATOR_PROMPT.format(problem="first"),
                       GENERATOR_PROMPT.format(problem="second")], 4)]
    first, own, second = report["per_problem"]
    assert [a["reason"] for a in first["attempts"]] == ["no_inputs", "too_few_tests", "kept"]
    assert (first["attempt"], first["generator_source"], first["valid_tests"]) == (3, "model", 10)
    assert (own["attempt"], own["generator_source"]) == (1, "row")
    assert [a["reason"] for a in second["attempts"]] == ["no_inputs"] + ["duplicate"] * 3
    assert (second["attempt"], second["reason"]) == (None, "no_inputs")
    assert [row["generator"] for row in kept] == [GEN, GEN]  # the winning code is saved
    assert kept[0]["id"] == "f" and "generator" not in rows[0]


@needs_bwrap
def test_best_failed_candidate_gives_the_counts() -> None:
    problem = Problem("add", "", "code", solutions=(ADD,) * 3)
    _, report = generate_tests(problem, ["raise SystemExit(1)", FIVE, "print("], _cfg())
    assert [a["reason"] for a in report["attempts"]] == ["no_inputs", "too_few_tests", "no_inputs"]
    assert (report["reason"], report["valid_tests"]) == ("too_few_tests", 5)
    assert report["attempt"] is None


# ---------------------------------------------------------------- a real tiny model


TARGET = f"```python\n{GEN}```"  # what the trained model answers


@pytest.fixture(scope="module")
def writer_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny char-level Llama trained (teacher forcing, loss on the answer only) until its
    greedy answer to GENERATOR_PROMPT(PROBLEM) is TARGET; saved like any model."""
    from openk1.models.io import save_model
    from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama

    tokenizer = char_tokenizer()
    size = TinyModelConfig.model_validate({"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 2,
                                           "intermediate": 128, "max_positions": 1024})
    model = tiny_llama(size, tokenizer, seed=0)
    prompt = tokenizer(GENERATOR_PROMPT.format(problem=PROBLEM))["input_ids"]
    answer = tokenizer(TARGET, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(400):
        out = model(input_ids=ids, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        greedy = out.logits[0, len(prompt) - 1:-1].argmax(-1).tolist()  # next-token guesses
        if greedy == answer and out.loss.item() < 0.05:
            break
    assert greedy == answer, "the tiny model did not learn the generator"
    path = tmp_path_factory.mktemp("writer") / "model"
    save_model(model.eval(), tokenizer, path)
    return path


def _run_cli(
    tmp_path: Path, model: Path, rows: list[dict[str, Any]], *settings: str
) -> dict[str, Any]:
    data, out = tmp_path / "in.jsonl", tmp_path / "run"
    write_jsonl(data, rows)
    args = ["code-tests", "--model", str(model), "--data", str(data), "--out", str(out),
            "--set", "num_inputs=10", "min_tests=8", "run_cpu_s=1.0", "generator_cpu_s=1.0",
            "generator_sampling.max_new_tokens=120", *settings]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    kept = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    return {"summary": summary, "kept": kept}


@needs_bwrap
def test_trained_model_writes_a_working_generator(tmp_path: Path, writer_model_dir: Path) -> None:
    from openk1.models.io import load_model
    from openk1.rollout.hf import HFEngine, SamplingConfig

    rows = [{"prompt": PROBLEM, "solutions": [ADD] * 3, "id": "written"},
            {"prompt": "Add.", "solutions": [ADD] * 3, "generator": GEN, "id": "own"}]
    got = _run_cli(tmp_path, writer_model_dir, rows, "generator_attempts=2",
                   "generator_sampling.temperature=0")
    model, tokenizer = load_model(writer_model_dir)
    greedy = SamplingConfig.model_validate({"temperature": 0.0, "max_new_tokens": 120})
    request = GENERATOR_PROMPT.format(problem=PROBLEM)   # in the model's prompt format, by the engine
    answer = HFEngine(model, tokenizer, greedy).generate([request], 1, seed=0).texts[0]
    assert answer == TARGET
    written, own = got["kept"]
    assert written["generator"] == extract_generator(answer) == GEN  # the model's code, saved
    assert len(written["tests"]) >= 8
    for test in written["tests"]:
        a, b = map(int, test["input"].split())
        assert test["output"] == str(a + b)
    assert own["generator"] == GEN and own["id"] == "own"
    report = got["summary"]["per_problem"][0]
    assert (report["generator_source"], report["attempt"], report["reason"]) == ("model", 1, "kept")
    assert [a["reason"] for a in report["attempts"]] == ["kept"]  # greedy: attempt 2 not needed
    assert got["summary"]["generator_source"] == {"model": 1, "row": 1}


@needs_bwrap
def test_untrained_model_candidates_all_fail(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"prompt": PROBLEM, "solutions": [ADD] * 3, "id": "written"}]
    got = _run_cli(tmp_path, tiny_model_dir, rows, "generator_attempts=2",
                   "generator_sampling.max_new_tokens=40")
    assert got["kept"] == []
    report = got["summary"]["per_problem"][0]
    assert (report["reason"], report["attempt"], report["kept"]) == ("no_inputs", None, False)
    assert [a["reason"] for a in report["attempts"]] == ["no_inputs", "no_inputs"]
    assert got["summary"]["reasons"] == {"no_inputs": 1}
