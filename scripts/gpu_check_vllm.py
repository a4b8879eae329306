"""One-GPU check of rollout/vllm_engine.py (scripts/gpu_smoke.sh step 1).

    python scripts/gpu_check_vllm.py MODEL_DIR

Checks: the Rollout's shapes and masks; vLLM's logp agrees with the HF model's log-probs of the
same tokens; pushed weights change the samples without a restart (and the original weights
restore them); sleep frees GPU memory and wake_up brings the engine back.
"""

from __future__ import annotations

import sys

import torch

from openk1.models.forward import response_logprobs
from openk1.models.io import load_model
from openk1.rollout.hf import SamplingConfig
from openk1.rollout.vllm_engine import VLLMEngine


def main(model_dir: str) -> None:
    engine = VLLMEngine(model_dir, SamplingConfig(max_new_tokens=32))
    prompts = ["What is 12 + 5?", "Name a prime number."]
    first = engine.generate(prompts, 2, seed=1)
    assert first.response_ids.shape[0] == 4 and first.logp.shape == first.action_mask.shape
    print("stop reasons", first.stop_reason)

    model, _ = load_model(model_dir, dtype=torch.float32)
    model.to("cuda").eval()
    with torch.no_grad():
        hf = response_logprobs(model, first.prompt_ids.cuda(), first.prompt_mask.cuda(),
                               first.response_ids.cuda(), first.action_mask.cuda()).cpu()
    gap = float(((hf - first.logp).abs() * first.action_mask).max())
    print(f"max |logp_vllm - logp_hf| = {gap:.3e} (bf16 engine vs fp32 HF)")
    assert gap < 0.5, gap

    again = engine.generate(prompts, 2, seed=1)
    assert torch.equal(again.response_ids, first.response_ids), "not deterministic under a seed"
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    noisy = {k: v + 0.02 * torch.randn_like(v) if v.dim() == 2 else v for k, v in state.items()}
    engine.load_weights(noisy)
    changed = engine.generate(prompts, 2, seed=1)
    print("responses changed by new weights:", not torch.equal(changed.response_ids, first.response_ids))
    engine.load_weights(state)
    restored = engine.generate(prompts, 2, seed=1)
    assert torch.equal(restored.response_ids, first.response_ids), "weights not restored"

    del model
    torch.cuda.empty_cache()
    before = torch.cuda.mem_get_info()[0]
    engine.sleep()
    after = torch.cuda.mem_get_info()[0]
    print(f"sleep freed {(after - before) / 2**30:.2f} GiB")
    assert after > before
    engine.wake_up()
    woke = engine.generate(prompts, 2, seed=1)
    assert torch.equal(woke.response_ids, first.response_ids), "wake_up changed the engine"
    print("vLLM engine check passed")


if __name__ == "__main__":
    main(sys.argv[1])
