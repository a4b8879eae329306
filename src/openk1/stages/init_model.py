"""`openk1 init-model`: write a tiny Llama + character tokenizer as a save_pretrained folder."""

from __future__ import annotations

from typing import Any

from openk1.config import StageConfig
from openk1.models.io import save_model
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama


class InitModelConfig(StageConfig, TinyModelConfig):
    """Tiny model size (`--set hidden=128 layers=4`) and the seed of its initialisation."""


def run(cfg: InitModelConfig) -> dict[str, Any]:
    tokenizer = char_tokenizer()
    size = TinyModelConfig(**{k: getattr(cfg, k) for k in TinyModelConfig.model_fields})
    model = tiny_llama(size, tokenizer, cfg.seed)
    save_model(model, tokenizer, cfg.out)
    return {"model": cfg.out, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab": len(tokenizer)}
