import json

import pytest

from openk1.data.io import load_problems, load_sft_rows
from openk1.errors import OpenK1Error


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_valid_rows_keep_extra_fields_and_default_ids(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "answer": "2", "note": "x"},
                                        {"prompt": "2+2=", "answer": 4, "id": "b", "type": "math"}])
    a, b = load_problems(path)
    assert (a.id, a.answer, a.extra) == ("1", "2", {"note": "x"})
    assert (b.id, b.answer) == ("b", "4")


@pytest.mark.parametrize("row, message", [
    ({"answer": "2"}, r"line 2: missing field 'prompt'"),
    ({"prompt": "x"}, r"line 2: missing field 'answer'"),
    ({"prompt": 3, "answer": "2"}, r"line 2: field 'prompt' must be str, got int"),
    ({"prompt": "x", "answer": "2", "type": "essay"}, r"line 2: field 'type' must be one of"),
    ({"prompt": "x", "type": "code"}, r"line 2: missing field 'tests'"),
])
def test_bad_row_names_file_row_and_field(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, row])
    with pytest.raises(OpenK1Error, match=message) as info:
        load_problems(path)
    assert str(path) in str(info.value)


def test_not_json_and_empty_file(tmp_path):
    with pytest.raises(OpenK1Error, match=r"line 1: not valid JSON"):
        load_problems(write(tmp_path / "a.jsonl", ["{oops"]))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(OpenK1Error, match="empty file"):
        load_problems(tmp_path / "e.jsonl")
    with pytest.raises(OpenK1Error, match="file not found"):
        load_problems(tmp_path / "missing.jsonl")


def test_sft_rows_need_response(tmp_path):
    path = write(tmp_path / "s.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "a"}])
    with pytest.raises(OpenK1Error, match=r"line 2: missing field 'response'"):
        load_sft_rows(path)


def test_parquet_rows_are_read_and_validated(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "1+1=", "answer": "2", "difficulty": 1},
                                         {"prompt": "2+2=", "answer": "4", "difficulty": 2}]), path)
    a, b = load_problems(path)
    assert (a.prompt, a.answer, b.difficulty, b.id) == ("1+1=", "2", 2, "2")
    pq.write_table(pa.Table.from_pylist([{"prompt": "1+1=", "answer": None}]), path)
    with pytest.raises(OpenK1Error, match=r"p.parquet: row 1: missing field 'answer'"):
        load_problems(path)


def test_hf_dataset_saved_on_disk(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "3+4=", "answer": "7", "type": "math"},
                       {"prompt": "5+5=", "answer": "10", "type": "math"}]).save_to_disk(str(tmp_path / "ds"))
    a, b = load_problems(tmp_path / "ds")
    assert (a.prompt, a.answer, b.answer, b.id) == ("3+4=", "7", "10", "2")
