"""The run-directory contract (report/run_dir.py): --resume continues the run with its own
config, an existing run is never mixed or silently replaced, writes are durable and follow the
umask, JSON is strict, and a refused start writes nothing."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.report.run_dir import (
    TMP_MARK,
    RunDir,
    atomic_dir,
    atomic_file,
    atomic_write_text,
    read_metrics,
    to_json,
)

RL = ["--set", "iterations=2", "prompts_per_iter=3", "samples_per_prompt=2", "tau=0.5",
      "sampling.max_new_tokens=5", "checkpoint_every=1", "eval_at_start=false", "micro_batch_size=8"]


@pytest.fixture()
def problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(1, 5) for b in range(1, 3)])
    return path


def rl(tmp_path, tiny_model_dir, problems, *extra):
    return main(["rl", "--model", str(tiny_model_dir), "--data", str(problems),
                 "--out", str(tmp_path / "run"), *RL, *extra])


def saved_config(run):
    return yaml.safe_load((run / "config.yaml").read_text())


def tree(path):
    """Every entry under `path` with its size and mtime: equal trees = nothing written."""
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in path.rglob("*"))


def test_resume_restores_the_runs_own_config(tmp_path, tiny_model_dir, problems):
    assert rl(tmp_path, tiny_model_dir, problems) == 0
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step_000002")   # killed after iteration 1's checkpoint
    # only --out, --data and --resume: tau, k and the sizes come from run/config.yaml, not defaults
    assert main(["rl", "--out", str(run), "--data", str(problems), "--resume"]) == 0
    config = saved_config(run)
    assert (config["tau"], config["samples_per_prompt"], config["prompts_per_iter"]) == (0.5, 2, 3)
    assert config["resume"] is True
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_resume_refuses_a_change_of_meaning_and_allows_iterations(tmp_path, tiny_model_dir, problems, capsys):
    assert rl(tmp_path, tiny_model_dir, problems) == 0
    run = tmp_path / "run"
    before = tree(run)
    assert main(["rl", "--out", str(run), "--resume", "--set", "tau=0.1"]) == 2
    assert "--resume cannot change tau (tau: 0.5 -> 0.1)" in capsys.readouterr().err
    assert main(["rl", "--out", str(run), "--resume", "--set", "iterations=1"]) == 2
    assert "iterations=1, but this checkpoint is at step 2" in capsys.readouterr().err
    assert tree(run) == before                                    # refused: nothing written
    assert main(["rl", "--out", str(run), "--resume", "--set", "iterations=3", "keep_checkpoints=3"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert saved_config(run)["iterations"] == 3


def test_an_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, tiny_model_dir, problems, capsys):
    assert rl(tmp_path, tiny_model_dir, problems) == 0
    run = tmp_path / "run"
    before = tree(run)
    assert rl(tmp_path, tiny_model_dir, problems) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert tree(run) == before
    (run / "checkpoints" / "step_000001" / "marker").write_text("old")
    assert rl(tmp_path, tiny_model_dir, problems, "--set", "iterations=1", "--overwrite") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]    # not appended
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]
    assert not (run / "checkpoints" / "step_000001" / "marker").exists()      # old ones gone


def test_a_folder_that_holds_no_run_is_never_written_into(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["init-model", "--out", str(folder), *extra]) == 2
        assert "not empty and not an openk1 run" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_overwrite_refuses_to_delete_its_own_inputs(tmp_path, tiny_model_dir, problems, capsys):
    assert rl(tmp_path, tiny_model_dir, problems) == 0
    inside = tmp_path / "run" / "problems.jsonl"
    shutil.copy(problems, inside)
    assert main(["rl", "--model", str(tiny_model_dir), "--data", str(inside), "--out",
                 str(tmp_path / "run"), "--overwrite"]) == 2
    assert "--overwrite would delete data" in capsys.readouterr().err


def test_default_out_is_a_new_timestamped_run_never_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init-model", "--set", "hidden=32", "layers=1", "heads=2", "kv_heads=2",
                 "intermediate=32"]) == 0
    assert main(["init-model", "--set", "hidden=32", "layers=1", "heads=2", "kv_heads=2",
                 "intermediate=32"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("init-model-") for r in runs)
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"config.yaml", "summary.json", "model"}


def test_init_model_writes_a_run_directory_and_model_accepts_it(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["init-model", "--out", str(out), "--set", "hidden=32", "layers=2", "heads=2",
                 "kv_heads=2", "intermediate=64"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert saved_config(out)["hidden"] == 32
    assert json.loads((out / "summary.json").read_text())["model"] == str(out / "model")
    from openk1.models.io import load_model

    model, _ = load_model(out)   # --model DIR finds DIR/model
    assert model.config.hidden_size == 32


def test_resume_removes_temporaries_and_purges_tensorboard_after_the_checkpoint(tmp_path, tiny_model_dir, problems):
    assert rl(tmp_path, tiny_model_dir, problems, "--set", "iterations=3", "checkpoint_every=2") == 0
    run = tmp_path / "run"
    # a kill after iteration 3 was logged but before its checkpoint was renamed into place
    shutil.rmtree(run / "checkpoints" / "step_000003")
    leftover = run / "checkpoints" / f".step_000003.abc{TMP_MARK}"
    leftover.mkdir()
    (leftover / "optimizer.pt").write_bytes(b"half")
    (run / f".summary.json.xyz{TMP_MARK}").write_text("{")
    assert main(["rl", "--out", str(run), "--data", str(problems), "--resume"]) == 0
    assert not list(run.rglob(f"*{TMP_MARK}*"))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    events = EventAccumulator(str(run / "tb")).Reload()
    assert [s.step for s in events.Scalars("reward/mean")] == [1, 2, 3]   # step 3 once, not twice


def test_nothing_is_written_when_validation_fails(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    out = tmp_path / "run"
    assert main(["rl", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(out)]) == 2
    assert "missing field 'answer'" in capsys.readouterr().err
    assert main(["rl", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(out),
                 "--set", "batch=1"]) == 2
    assert main(["eval", "--model", str(tmp_path / "none"), "--data", str(bad), "--out", str(out)]) == 2
    assert not out.exists()


def test_files_and_folders_follow_the_umask(tmp_path, tiny):
    model, tokenizer = tiny
    from openk1.models.io import save_model

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_file(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"png")
        save_model(model, tokenizer, tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "a.txt", tmp_path / "b.png",
                                                              tmp_path / "model"]}
    assert modes == {"a.txt": 0o640, "b.png": 0o640, "model": 0o750}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "model").iterdir()} == {0o640}


def test_files_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        synced.append(f"rename {os.path.basename(dst)}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text("{}")
    names = [os.path.basename(s) if not s.startswith("rename") else s for s in synced]
    rename = names.index("rename ckpt")
    assert {"weights.bin", "state.json", "sub"} <= set(names[:rename])     # contents first
    assert names[rename + 1:] == [tmp_path.name]                            # then the parent folder


def test_json_is_strict(tmp_path):
    run = RunDir(tmp_path / "r", tensorboard=False)
    run.log(1, {"loss": float("nan"), "grad": float("inf"), "ok": 0.5})
    run.write_summary({"eval_loss": float("nan"), "nested": {"x": [1.0, float("-inf")]}})

    def refuse(token):
        raise ValueError(token)

    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 1, "loss": None, "grad": None, "ok": 0.5}
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=refuse)
    assert summary == {"eval_loss": None, "nested": {"x": [1.0, None]}}
    assert to_json({"a": math.nan}) == '{"a": null}'
