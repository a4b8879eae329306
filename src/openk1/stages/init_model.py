"""`openk1 init-model`: a run directory with a tiny Llama + character tokenizer in DIR/model/."""

from __future__ import annotations

from typing import Any

from openk1.config import StageConfig
from openk1.frame import StageRun
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama


class InitModelConfig(StageConfig, TinyModelConfig):
    """Tiny model size (`--set hidden=128 layers=4`) and the seed of its initialisation."""


def run(cfg: InitModelConfig) -> dict[str, Any]:
    """DIR/model/ (save_pretrained), DIR/config.yaml, DIR/summary.json; `--model DIR` finds
    the model in DIR/model."""
    with StageRun(cfg, tensorboard=False) as frame:
        frame.begin()
        tokenizer = char_tokenizer()
        size = TinyModelConfig(**{k: getattr(cfg, k) for k in TinyModelConfig.model_fields})
        model = tiny_llama(size, tokenizer, cfg.seed)
        summary = {"model": frame.save_model(model, tokenizer),
                   "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
        return frame.finish(summary)
