"""`openk1 init-model`: a run directory with a tiny Llama + character tokenizer in DIR/model/."""

from __future__ import annotations

from typing import Any

from openk1.config import StageConfig
from openk1.models.io import save_model
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
from openk1.report.run_dir import open_run


class InitModelConfig(StageConfig, TinyModelConfig):
    """Tiny model size (`--set hidden=128 layers=4`) and the seed of its initialisation."""


def run(cfg: InitModelConfig) -> dict[str, Any]:
    """DIR/model/ (save_pretrained), DIR/config.yaml, DIR/summary.json; `--model DIR` finds
    the model in DIR/model."""
    run_dir = open_run(cfg, tensorboard=False)   # the run-directory contract
    run_dir.write_config(cfg)
    tokenizer = char_tokenizer()
    size = TinyModelConfig(**{k: getattr(cfg, k) for k in TinyModelConfig.model_fields})
    model = tiny_llama(size, tokenizer, cfg.seed)
    save_model(model, tokenizer, run_dir.path / "model")
    summary = {"model": str(run_dir.path / "model"), "parameters": sum(p.numel() for p in model.parameters()),
               "vocab": len(tokenizer)}
    run_dir.write_summary(summary)
    return summary
