"""`openk1 init-model`: a run directory with a tiny Llama + character tokenizer in DIR/model/
(`vision: true`: a tiny LLaVA + its processor instead, models/vision.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from openk1.config import StageConfig
from openk1.frame import StageRun
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama


class InitModelConfig(StageConfig, TinyModelConfig):
    """Tiny model size (`--set hidden=128 layers=4`) and the seed of its initialisation."""

    vision: bool = Field(False, description="a tiny vision-language model instead: LLaVA with a CLIP tower "
                         "(32x32 px images, patch 8: 16 tokens per image) on this Llama, and its processor "
                         "(docs/vision.md)")


def run(cfg: InitModelConfig) -> dict[str, Any]:
    """DIR/model/ (save_pretrained), DIR/config.yaml, DIR/summary.json; `--model DIR` finds
    the model in DIR/model."""
    with StageRun(cfg, tensorboard=False) as frame:
        frame.begin()
        tokenizer = char_tokenizer()
        size = TinyModelConfig(**{k: getattr(cfg, k) for k in TinyModelConfig.model_fields})
        if cfg.vision:
            return frame.finish(_save_vision(frame, size, tokenizer, cfg.seed))
        model = tiny_llama(size, tokenizer, cfg.seed)
        summary = {"model": frame.save_model(model, tokenizer),
                   "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
        return frame.finish(summary)


def _save_vision(frame: StageRun, size: TinyModelConfig, tokenizer: Any, seed: int) -> dict[str, Any]:
    """The tiny VLM + processor saved in DIR/model (rank 0); the summary's figures."""
    from openk1.distributed import runtime
    from openk1.models.vision import save_vision_model, tiny_vlm

    model, processor = tiny_vlm(size, tokenizer, seed)
    path = frame.path / "model"
    if runtime.is_main():
        save_vision_model(model, processor, path)
    return {"model": str(path), "parameters": sum(p.numel() for p in model.parameters()),
            "vision_parameters": sum(p.numel() for p in model.model.vision_tower.parameters()),
            "vocab": len(tokenizer), "image_tokens": model.config.image_seq_length,
            "architecture": type(model).__name__}
