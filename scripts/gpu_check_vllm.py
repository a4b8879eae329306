"""One-GPU check of rollout/vllm_engine.py (scripts/gpu_smoke.sh step 1; never run yet).

    python scripts/gpu_check_vllm.py [MODEL_DIR] [--dtype bfloat16|float32] [--out REPORT.json]

Needs a CUDA GPU and `pip install -e ".[vllm]"`. Without MODEL_DIR it builds a small random Llama
(head size 64, character tokenizer, sharpened logits) in a temporary folder: nothing is
downloaded. Each check prints its figures and asserts; the figures also go to REPORT.json.

1. engine: vLLM's version in range, its worker in this process, exact_logp False
2. rollout: shapes, masks, float32 log-probs <= 0, stop reasons, same tokens under the same seeds
3. log-probs: vLLM's (processed, at T = 0.7) against the HF model's fp32 `response_logprobs` of the
   same tokens at T = 0.7 (bounded gap) and at T = 1 (a larger gap: vLLM's include T)
4. weight push: changed weights (version 1) change the samples, version 0 is refused, the
   original weights (version 2) give the first samples back
5. sleep / wake: sleep frees the GPU memory, a push while asleep wakes the weights only (the KV
   cache stays freed), wake_up brings the KV cache back, and the samples are the first ones
6. budget: requests with a 3-token budget stop with "budget" (or "normal") after <= 3 tokens

Bounds on the log-prob gap are first guesses (bf16 forward vs fp32: max 0.25, mean 0.05; fp32:
max 5e-3, mean 5e-4): the run that first passes or fails here should record what it measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from openk1.models.forward import response_logprobs
from openk1.models.io import load_model, save_model
from openk1.models.tiny import TinyModelConfig, char_tokenizer, tiny_llama
from openk1.rollout.engine import Request
from openk1.rollout.hf import SamplingConfig
from openk1.rollout.vllm_engine import VLLMEngine, VLLMSettings, WeightsVersionError
from openk1.types import Rollout

PROMPTS = ["What is 12 + 5?", "Name a prime number.", "2+2=", "Count: 1, 2, 3,"]
T = 0.7
BOUNDS = {"bfloat16": (0.25, 0.05), "float32": (5e-3, 5e-4)}   # max, mean |logp_vllm - logp_hf|
GIB = 2**30
DEVICE = "cuda"


def build_model(folder: Path) -> Path:
    """A small random Llama vLLM's attention kernels take (head size 64), logits sharpened x4."""
    tokenizer = char_tokenizer()
    size = TinyModelConfig(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512, max_positions=2048)
    model = tiny_llama(size, tokenizer, seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)   # logits x4: T moves sampled log-probs by ~0.5
    save_model(model, tokenizer, folder)
    return folder


def free_bytes() -> int:
    torch.cuda.synchronize()
    return int(torch.cuda.mem_get_info()[0])


def check_rollout(engine: VLLMEngine) -> tuple[Rollout, dict[str, Any]]:
    first = engine.generate(PROMPTS, 2, seed=1)
    mask = first.action_mask.bool()
    assert first.response_ids.shape[0] == 2 * len(PROMPTS) and first.logp.shape == first.action_mask.shape
    assert first.logp.dtype == torch.float32 and (first.logp[mask] <= 0).all() and (first.logp[~mask] == 0).all()
    assert set(first.stop_reason) <= {"normal", "max_tokens"}, first.stop_reason
    again = engine.generate(PROMPTS, 2, seed=1)
    assert torch.equal(again.response_ids, first.response_ids), "not deterministic under the seeds"
    return first, {"tokens": int(mask.sum()), "stop_reasons": first.stop_reason}


def check_logprobs(model: Any, rollout: Rollout, dtype: str) -> dict[str, float]:
    args = [x.to(DEVICE) for x in (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.action_mask)]
    mask = rollout.action_mask.bool()
    with torch.no_grad():
        gaps = {t: (response_logprobs(model, *args, temperature=t).float().cpu() - rollout.logp).abs()[mask]
                for t in (T, 1.0)}
    figures = {"max_gap": float(gaps[T].max()), "mean_gap": float(gaps[T].mean()),
               "mean_gap_at_T1": float(gaps[1.0].mean())}
    top, mean = BOUNDS.get(dtype, BOUNDS["bfloat16"])
    assert figures["max_gap"] < top and figures["mean_gap"] < mean, figures
    assert figures["mean_gap"] < figures["mean_gap_at_T1"], f"vLLM's log-probs do not include T: {figures}"
    return figures


def check_push(engine: VLLMEngine, state: dict[str, torch.Tensor], first: Rollout) -> dict[str, Any]:
    torch.manual_seed(0)
    noisy = {k: v + 0.5 * torch.randn_like(v) if v.dim() == 2 else v for k, v in state.items()}
    engine.load_versioned(noisy, 1)
    changed = engine.generate(PROMPTS, 2, seed=1)
    assert not torch.equal(changed.response_ids, first.response_ids), "pushed weights did not change the samples"
    try:
        engine.load_versioned(state, 0)
        raise AssertionError("an older version was accepted")
    except WeightsVersionError:
        pass
    engine.load_versioned(state, 2)
    restored = engine.generate(PROMPTS, 2, seed=1)
    assert torch.equal(restored.response_ids, first.response_ids), "the original weights did not come back"
    return {"version": engine.version}


def check_sleep(engine: VLLMEngine, state: dict[str, torch.Tensor], first: Rollout) -> dict[str, float]:
    awake = free_bytes()
    engine.sleep()
    asleep = free_bytes()
    engine.load_versioned(state, 3)          # wakes the weights only
    weights = free_bytes()
    assert engine.state == "weights"
    engine.wake_up()
    woke = free_bytes()
    figures = {"freed_by_sleep_gib": (asleep - awake) / GIB, "weights_gib": (asleep - weights) / GIB,
               "kv_cache_gib": (weights - woke) / GIB}
    assert asleep - awake > GIB and weights - woke > GIB and asleep >= weights, figures
    again = engine.generate(PROMPTS, 2, seed=1)
    assert torch.equal(again.response_ids, first.response_ids), "sleep / wake changed the samples"
    return figures


def check_budget(engine: VLLMEngine) -> dict[str, Any]:
    prompt = tuple(engine.tokenizer(PROMPTS[0])["input_ids"])
    rollout = engine.sample([Request(prompt, (5, i), budget=3) for i in range(4)])
    lengths = rollout.action_mask.sum(1).tolist()
    assert all(n <= 3 for n in lengths) and set(rollout.stop_reason) <= {"budget", "normal"}, rollout.stop_reason
    assert "budget" in rollout.stop_reason, rollout.stop_reason   # 4 EOS within 3 tokens: unlikely
    return {"stop_reasons": rollout.stop_reason, "lengths": lengths}


def run(model_dir: Path, dtype: str) -> dict[str, Any]:
    settings = VLLMSettings(dtype=dtype, gpu_memory_utilization=0.3, max_model_len=1024)
    engine = VLLMEngine(str(model_dir), SamplingConfig(temperature=T, max_new_tokens=32), settings)
    assert engine.exact_logp is False and engine.state == "awake"
    report: dict[str, Any] = {"forward_path": engine.forward_path}
    first, report["rollout"] = check_rollout(engine)
    model, _ = load_model(model_dir, dtype=torch.float32, device=DEVICE)
    report["logprobs"] = check_logprobs(model, first, dtype)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    report["push"] = check_push(engine, state, first)
    report["sleep"] = check_sleep(engine, state, first)
    report["budget"] = check_budget(engine)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", help="a save_pretrained folder (default: build a small one)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(BOUNDS))
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check_vllm: needs a CUDA GPU (and pip install -e \".[vllm]\")")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model_dir) if args.model_dir else build_model(Path(tmp) / "model")
        report = run(folder, args.dtype)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print("vLLM engine check passed")


if __name__ == "__main__":
    main()
