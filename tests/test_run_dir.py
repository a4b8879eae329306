"""RunDir: scalars go to metrics.jsonl and TensorBoard; multi-value tensors to TensorBoard histograms."""

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from openk1.report.run_dir import RunDir, read_metrics


def test_scalars_to_jsonl_and_tensorboard_histograms_to_tensorboard_only(tmp_path):
    run = RunDir(tmp_path)
    run.log(3, {"loss": 0.5, "lengths": torch.tensor([10.0, 20.0, 20.0, 40.0]), "one": torch.tensor(2.0)})
    run.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 0.5, "one": 2.0}]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0}).Reload()
    assert events.Tags()["histograms"] == ["lengths"]
    (histogram,) = events.Histograms("lengths")
    assert histogram.step == 3
    # 4 values, sum 90, min 10, max 40
    assert (histogram.histogram_value.num, histogram.histogram_value.sum) == (4, 90.0)
    assert (histogram.histogram_value.min, histogram.histogram_value.max) == (10.0, 40.0)
    assert [s.value for s in events.Scalars("loss")] == [0.5]
