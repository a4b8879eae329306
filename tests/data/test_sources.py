"""DataSource: presets (gsm8k, math, messages, humaneval, mbpp, apps), column mapping, splits, errors."""

import json

import pytest
from pydantic import Field, ValidationError

from openk1.config import StageConfig, build
from openk1.data.io import load_problems, load_sft_rows
from openk1.data.sources import DataSource, as_source, iter_source, last_boxed, read_sft_rows
from openk1.errors import OpenK1Error
from openk1.rewards.code import bad_test_reason, classify_test


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_of(source, purpose="problem"):
    return [row for _, row in iter_source(source, purpose)]


def program_tests_supported():
    return bad_test_reason({"program": "assert True", "entry_point": "f"}) is None


# -- DataSource -----------------------------------------------------------------------------------


def test_a_string_is_a_source_and_dumps_back_as_the_string():
    source = DataSource.model_validate("train.jsonl")
    assert (source.path, source.preset, source.limit) == ("train.jsonl", "", 0)
    assert source.model_dump() == "train.jsonl" and as_source("train.jsonl") == source
    full = DataSource(path="g", preset="gsm8k", limit=5)
    assert full.model_dump()["preset"] == "gsm8k"
    assert DataSource.model_validate(full.model_dump()) == full
    assert not DataSource() and DataSource(path="x")


def test_as_a_config_field(tmp_path):
    class Config(StageConfig):
        data: DataSource = Field(DataSource(), description="dataset")
        eval_data: DataSource = Field(DataSource(), description="held-out problems")

    cfg = build(Config, {"data": "train.jsonl", "eval_data": {"path": "g", "preset": "gsm8k", "split": "test"}})
    assert (cfg.data, cfg.eval_data.preset, cfg.eval_data.split) == (DataSource(path="train.jsonl"), "gsm8k", "test")
    dumped = cfg.model_dump()
    assert dumped["data"] == "train.jsonl" and dumped["eval_data"]["preset"] == "gsm8k"
    assert not build(Config, {}).eval_data
    cfg.data = "other.jsonl"                                  # --data FILE assigns a string
    assert cfg.data == DataSource(path="other.jsonl")
    with pytest.raises(OpenK1Error, match=r"config: eval_data.preset: unknown preset 'gsm9k'"):
        build(Config, {"eval_data": {"path": "g", "preset": "gsm9k"}})
    with pytest.raises(OpenK1Error, match=r"config: data.colum: unknown key"):
        build(Config, {"data": {"path": "g", "colum": "x"}})


def test_unknown_preset_and_unread_column_are_errors():
    with pytest.raises(ValidationError, match=r"unknown preset 'gsm9k'; presets: gsm8k, math, messages, humaneval"):
        DataSource(path="x", preset="gsm9k")
    with pytest.raises(OpenK1Error, match=r"data: preset: unknown preset 'nope'.*apps"):
        as_source({"path": "x", "preset": "nope"})
    with pytest.raises(ValidationError, match=r"preset gsm8k reads no response column \(response_key\); "
                                              r"it reads prompt_key \(question\)"):
        DataSource(path="x", preset="gsm8k", response_key="sol")


def test_column_mapping_type_and_limit_on_own_rows(tmp_path):
    path = write(tmp_path / "q.jsonl", [{"question": "1+1=", "final": "2", "key": "a", "note": 1},
                                        {"question": "2+2=", "final": "4", "key": "b"},
                                        {"question": "3+3=", "final": "6", "key": "c"}])
    source = DataSource(path=str(path), prompt_key="question", answer_key="final", id_key="key",
                        type="freeform", limit=2)
    a, b = load_problems(source)
    assert (a.prompt, a.answer, a.id, a.type, a.extra) == ("1+1=", "2", "a", "freeform", {"note": 1})
    assert b.id == "b"
    with pytest.raises(OpenK1Error, match=r"q.jsonl: line 1: field 'query' missing \(openk1 rows; the row has: "
                                          r"question, final, key, note\)"):
        load_problems(DataSource(path=str(path), prompt_key="query", answer_key="final"))


def test_sft_column_mapping(tmp_path):
    path = write(tmp_path / "s.jsonl", [{"instruction": "hi", "output": "hello"}])
    source = DataSource(path=str(path), prompt_key="instruction", response_key="output")
    assert load_sft_rows(source) == [("hi", "hello")]
    assert read_sft_rows(source) == [{"prompt": "hi", "response": "hello"}]


# -- gsm8k ----------------------------------------------------------------------------------------

GSM8K = {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072"}


def test_gsm8k_problem_and_sft_rows(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [GSM8K])
    source = DataSource(path=str(path), preset="gsm8k")
    (problem,) = load_problems(source)
    assert (problem.prompt, problem.answer, problem.id, problem.type) == (GSM8K["question"], "1072", "1", "math")
    solution = ("In May she sold 48/2 = 24 clips.\nIn all 48+24 = 72.\nThe answer is $\\boxed{1072}$.")
    assert problem.extra == {"solution": solution}
    assert load_sft_rows(source) == [(GSM8K["question"], solution)]


def test_gsm8k_errors_name_file_row_and_field(tmp_path):
    path = write(tmp_path / "g.jsonl", [GSM8K, {"answer": "#### 3"}])
    with pytest.raises(OpenK1Error, match=r"g.jsonl: line 2: field 'question' missing \(preset gsm8k; the row "
                                          r"has: answer\)"):
        load_problems(DataSource(path=str(path), preset="gsm8k"))
    path = write(tmp_path / "h.jsonl", [GSM8K, GSM8K, {"question": "q", "answer": "3"}])
    with pytest.raises(OpenK1Error, match=r"h.jsonl: line 3: field 'answer' has no final '#### N' line"):
        load_problems(DataSource(path=str(path), preset="gsm8k"))
    assert len(load_problems(DataSource(path=str(path), preset="gsm8k", limit=2))) == 2   # row 3 is never read


# -- math -----------------------------------------------------------------------------------------


def test_last_boxed_balances_braces():
    assert last_boxed(r"first \boxed{1}, then \boxed {\frac{a}{b+\{c\}}} end") == r"\frac{a}{b+\{c\}}"
    assert last_boxed(r"\boxed{\boxed{7}}") == "7"
    assert last_boxed(r"no box, \boxed{open") is None


def test_math_preset_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": "Half of 1?", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 3",
             "type": "Algebra", "answer": None},
            {"problem": "2+2?", "solution": r"\boxed{5} is wrong; 4.", "level": "Level ?", "type": "Prealgebra",
             "answer": "4"}]
    path = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    source = DataSource(path=str(path), preset="math")
    a, b = load_problems(source)
    assert (a.prompt, a.answer, a.difficulty, a.tags) == ("Half of 1?", r"\frac{1}{2}", 3, ("Algebra",))
    assert (b.answer, b.difficulty, b.tags) == ("4", None, ("Prealgebra",))   # the answer column wins
    assert load_sft_rows(source)[0] == ("Half of 1?", rows[0]["solution"])


def test_math_500_row_and_missing_box(tmp_path):
    path = write(tmp_path / "m.jsonl", [{"problem": "p", "solution": "s", "answer": "3", "subject": "Geometry",
                                         "level": 2, "unique_id": "test/geometry/1.json"},
                                        {"problem": "p", "solution": "no box"}])
    with pytest.raises(OpenK1Error, match=r"m.jsonl: line 2: field 'solution' has no \\boxed\{\} answer"):
        load_problems(DataSource(path=str(path), preset="math"))
    (row,) = rows_of(DataSource(path=str(path), preset="math", limit=1))
    assert row == {"prompt": "p", "answer": "3", "solution": "s", "difficulty": 2, "tags": ["Geometry"],
                   "id": "test/geometry/1.json"}


# -- messages -------------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": r"It is \boxed{42}."}]


def test_messages_preset(tmp_path):
    path = write(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    source = DataSource(path=str(path), preset="messages")
    (problem,) = load_problems(source)
    assert (problem.prompt, problem.answer) == ("What is 6*7?", "42")
    assert read_sft_rows(source) == [{"messages": CHAT}]
    with pytest.raises(OpenK1Error, match=r"line 1: a `messages` row is no \(prompt, response\) pair"):
        load_sft_rows(source)


def test_messages_errors(tmp_path):
    unboxed = CHAT[:-1] + [{"role": "assistant", "content": "42"}]
    path = write(tmp_path / "c.jsonl", [{"messages": CHAT}, {"messages": unboxed}])
    with pytest.raises(OpenK1Error, match=r"c.jsonl: line 2: field 'messages' has no \\boxed\{\} answer"):
        load_problems(DataSource(path=str(path), preset="messages"))
    path = write(tmp_path / "d.jsonl", [{"conv": [{"role": "user"}]}])
    with pytest.raises(OpenK1Error, match=r"d.jsonl: line 1: field 'conv' \[0\] must be \{role: str, content: str\}"):
        read_sft_rows(DataSource(path=str(path), preset="messages", messages_key="conv"))


# -- code -----------------------------------------------------------------------------------------

HUMANEVAL = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
             "canonical_solution": "    return a + b\n", "entry_point": "add",
             "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}


def test_humaneval_preset(tmp_path):
    source = DataSource(path=str(write(tmp_path / "he.jsonl", [HUMANEVAL])), preset="humaneval")
    (row,) = rows_of(source)
    assert row["tests"] == [{"program": HUMANEVAL["test"], "entry_point": "add"}]
    assert row["solutions"] == [HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"]]
    assert (row["type"], row["answer"], row["id"]) == ("code", "", "HumanEval/0")
    assert HUMANEVAL["prompt"] in row["prompt"] and "```python" in row["prompt"]
    (sft,) = read_sft_rows(source)
    assert sft["response"] == "```python\n" + row["solutions"][0].rstrip() + "\n```"
    if program_tests_supported():
        assert load_problems(source)[0].tests == ({"program": HUMANEVAL["test"], "entry_point": "add"},)
    bad = write(tmp_path / "bad.jsonl", [{k: v for k, v in HUMANEVAL.items() if k != "entry_point"}])
    with pytest.raises(OpenK1Error, match=r"bad.jsonl: line 1: field 'entry_point' missing"):
        rows_of(DataSource(path=str(bad), preset="humaneval"))


MBPP = {"task_id": 11, "text": "Write a function to remove the first and last occurrence of a given character.",
        "code": "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]",
        "test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\"", "assert remove_Occ(\"abcda\",\"a\") == \"bcd\""],
        "test_setup_code": "", "challenge_test_list": []}


def test_mbpp_full_and_sanitized(tmp_path):
    sanitized = {"task_id": 12, "prompt": "Write a function to compute a square root.", "code": "import math\n",
                 "test_imports": ["import math"], "test_list": ["assert math.isclose(sq(4), 2)"]}
    source = DataSource(path=str(write(tmp_path / "mbpp.jsonl", [MBPP, sanitized])), preset="mbpp")
    full, san = rows_of(source)
    assert full["tests"] == [{"program": "\n".join(MBPP["test_list"])}]
    assert MBPP["text"] in full["prompt"] and MBPP["test_list"][0] in full["prompt"]
    assert MBPP["test_list"][1] not in full["prompt"]                    # only the first assert is shown
    assert (full["solutions"], full["id"], full["type"]) == ([MBPP["code"]], "11", "code")
    assert san["tests"] == [{"program": "import math\nassert math.isclose(sq(4), 2)"}]
    assert sanitized["prompt"] in san["prompt"]
    if all(bad_test_reason(r["tests"][0]) is None for r in (full, san)):
        assert [p.id for p in load_problems(source)] == ["11", "12"]
    bad = write(tmp_path / "m.jsonl", [{**MBPP, "test_list": []}])
    with pytest.raises(OpenK1Error, match=r"m.jsonl: line 1: field 'test_list' must be a non-empty list"):
        rows_of(DataSource(path=str(bad), preset="mbpp"))


def test_apps_stdio_and_call_tests(tmp_path):
    stdio = {"problem_id": 1, "question": "Add two numbers.", "difficulty": "introductory", "starter_code": "",
             "input_output": json.dumps({"inputs": ["1 2\n", ["3 4"]], "outputs": ["3\n", ["7"]]}),
             "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)"])}
    call = {"problem_id": 2, "question": "Return the sum.", "difficulty": "interview",
            "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
            "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2], [[1], "x"]],
                                        "outputs": [[3], [[1, 1]]]}),
            "solutions": ""}
    source = DataSource(path=str(write(tmp_path / "apps.jsonl", [stdio, call])), preset="apps")
    a, b = load_problems(source)
    assert a.tests == ({"input": "1 2\n", "output": "3\n"}, {"input": "3 4", "output": "7"})
    assert (a.id, a.difficulty, a.solutions, a.type) == ("1", "introductory", (json.loads(stdio["solutions"])[0],),
                                                         "code")
    assert "standard input" in a.prompt
    assert b.tests == ({"call": "Solution().add(1, 2)", "expected": "3"},
                       {"call": "Solution().add([1], 'x')", "expected": "[1, 1]"})
    assert [classify_test(t) for t in a.tests + b.tests] == ["stdio", "stdio", "call", "call"]
    assert "class Solution" in b.prompt and b.solutions == ()
    with pytest.raises(OpenK1Error, match=r"apps.jsonl: line 2: field 'solutions' missing: an SFT row needs"):
        read_sft_rows(source)
    bad = write(tmp_path / "bad.jsonl", [{**stdio, "input_output": "{oops"}])
    with pytest.raises(OpenK1Error, match=r"bad.jsonl: line 1: field 'input_output' is not valid JSON"):
        load_problems(DataSource(path=str(bad), preset="apps"))


# -- dataset folders and missing paths ------------------------------------------------------------


def test_dataset_dict_folder_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"train": [GSM8K, GSM8K], "test": [{"question": "q", "answer": "#### 5"}]}
    folder = tmp_path / "gsm8k"
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()}).save_to_disk(str(folder))
    assert [p.answer for p in load_problems(DataSource(path=str(folder), preset="gsm8k"))] == ["1072", "1072"]
    (test,) = load_problems(DataSource(path=str(folder), preset="gsm8k", split="test"))
    assert test.answer == "5"
    with pytest.raises(OpenK1Error, match=r"gsm8k\[train\]: row 1: field 'problem' missing"):
        load_problems(DataSource(path=str(folder), preset="math"))
    with pytest.raises(OpenK1Error, match=r"has no split 'dev'; its splits: train, test \(set `split`\)"):
        load_problems(DataSource(path=str(folder), preset="gsm8k", split="dev"))
    two = tmp_path / "two"
    datasets.DatasetDict({k: datasets.Dataset.from_list(rows["test"]) for k in ("a", "b")}).save_to_disk(str(two))
    with pytest.raises(OpenK1Error, match=r"holds several splits and none is 'train'; its splits: a, b"):
        load_problems(DataSource(path=str(two), preset="gsm8k"))
    one = tmp_path / "one"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([HUMANEVAL])}).save_to_disk(str(one))
    assert rows_of(DataSource(path=str(one), preset="humaneval"))[0]["id"] == "HumanEval/0"   # the only split


def test_split_of_a_file_and_a_folder_that_is_not_a_dataset(tmp_path):
    path = write(tmp_path / "g.jsonl", [GSM8K])
    with pytest.raises(OpenK1Error, match=r"split 'test' given, but only a dataset folder has splits"):
        load_problems(DataSource(path=str(path), preset="gsm8k", split="test"))
    (tmp_path / "dl" / "main").mkdir(parents=True)
    (tmp_path / "dl" / "main" / "train-00000-of-00001.parquet").write_bytes(b"")
    with pytest.raises(OpenK1Error, match=r"not a dataset folder written by save_to_disk; point the path at one of "
                                          r"its files: main/train-00000-of-00001.parquet"):
        load_problems(str(tmp_path / "dl"))


def test_hub_ids_get_the_download_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OpenK1Error) as info:
        load_problems("openai/gsm8k")
    message = str(info.value)
    assert "openk1 reads no dataset hub at run time" in message
    assert ("python -c \"import datasets; datasets.load_dataset('openai/gsm8k', 'main').save_to_disk('gsm8k')\""
            in message)
    assert "huggingface-cli download --repo-type dataset openai/gsm8k --local-dir gsm8k" in message
    assert "path: gsm8k, preset: gsm8k" in message
    with pytest.raises(OpenK1Error, match=r"load_dataset\('HuggingFaceH4/MATH-500'\)\.save_to_disk\('MATH-500'\)"
                                          r"[\s\S]*path: MATH-500, preset: math"):
        load_problems(DataSource(path="HuggingFaceH4/MATH-500"))
    with pytest.raises(OpenK1Error, match=r"preset: messages"):
        load_problems(DataSource(path="someone/chats", preset="messages"))
    with pytest.raises(OpenK1Error, match=r"^missing.jsonl: file not found$"):
        load_problems("missing.jsonl")


# -- the stages read presets ----------------------------------------------------------------------


def test_stages_read_a_gsm8k_file_through_its_preset(tmp_path, tiny_model_dir):
    """`openk1 sft`, `rl` and `eval` on raw GSM8K rows: sft trains on the worked solutions,
    rl and eval read the `#### N` answers; the saved config keeps the preset."""
    import yaml

    from openk1.cli import main
    from openk1.report.run_dir import read_metrics

    rows = [{"question": f"Tom has {a} apples and buys {b}. How many?",
             "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"} for a in range(1, 7) for b in range(1, 3)]
    data = write(tmp_path / "gsm8k.jsonl", rows)
    preset = ["data.preset=gsm8k", "eval.max_problems=2", "eval.sampling.max_new_tokens=4"]
    assert main(["sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "sft"),
                 "--set", "data.preset=gsm8k", "max_steps=2", "batch_size=4", "log_every=1"]) == 0
    assert read_metrics(tmp_path / "sft" / "metrics.jsonl")[-1]["tokens"] > 0
    saved = yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())
    assert saved["data"]["preset"] == "gsm8k" and saved["data"]["path"] == str(data)
    assert main(["rl", "--model", str(tmp_path / "sft"), "--data", str(data), "--out", str(tmp_path / "rl"),
                 "--set", "data.preset=gsm8k", "iterations=1", "prompts_per_iter=2", "samples_per_prompt=2",
                 "sampling.max_new_tokens=4", "eval_data.path=" + str(data), "eval_data.preset=gsm8k",
                 "eval_data.limit=2", "eval.sampling.max_new_tokens=4"]) == 0
    summary = json.loads((tmp_path / "rl" / "summary.json").read_text())
    assert summary["forward"] == {"update": "lean", "eval": "lean", "rollout": "lean"}
    assert main(["eval", "--model", str(tmp_path / "rl"), "--data", str(data), "--out", str(tmp_path / "eval"),
                 "--set", *preset]) == 0
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert sorted({s["answer"] for s in samples}) == ["2", "3"]   # rows 1 and 2: 1+1 and 1+2
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "dpo"),
                 "--set", "data.preset=gsm8k"]) == 2   # DPO pairs have no preset: a clear refusal
