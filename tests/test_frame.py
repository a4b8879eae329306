"""The stage frame (frame.py): config written only at `begin`, summary with wall_seconds, closed
on success and on failure."""

from __future__ import annotations

import json

import pytest

from openk1.config import StageConfig
from openk1.frame import StageRun


class Cfg(StageConfig):
    pass


def test_nothing_is_written_before_begin_and_the_summary_after(tmp_path) -> None:
    out = tmp_path / "run"
    with StageRun(Cfg(out=str(out)), tensorboard=False) as frame:
        assert not out.exists()            # a refused input leaves DIR as it was
        frame.begin()
        assert (out / "config.yaml").is_file() and not (out / "summary.json").exists()
        summary = frame.finish({"figure": 1.5})
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary and saved["figure"] == 1.5 and 0 <= saved["wall_seconds"] < 60
    assert frame.closed


def test_a_failed_run_is_closed_and_writes_no_summary(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with StageRun(Cfg(out=str(out))) as frame:
            frame.begin()
            frame.dir.log(1, {"loss": 2.0})
            raise RuntimeError("boom")
    assert frame.closed and not (out / "summary.json").exists()
    assert json.loads((out / "metrics.jsonl").read_text())["loss"] == 2.0
    assert list((out / "tb").iterdir())   # the TensorBoard events were flushed by the close


def test_a_stage_that_times_itself_keeps_its_figure(tmp_path) -> None:
    with StageRun(Cfg(out=str(tmp_path / "run")), tensorboard=False) as frame:
        frame.begin()
        assert frame.finish({"wall_seconds": 123.0})["wall_seconds"] == 123.0
