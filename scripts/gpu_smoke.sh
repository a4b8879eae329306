#!/usr/bin/env bash
# The scale-out paths on ONE GPU with a small real model (e.g. Qwen2.5-0.5B-Instruct, downloaded
# beforehand: `huggingface-cli download Qwen/Qwen2.5-0.5B-Instruct --local-dir MODEL_DIR`).
#
#   scripts/gpu_smoke.sh MODEL_DIR [OUT_DIR]
#
# What each step runs today (read from the code; never run: no GPU has been available):
# 1. vLLM engine: generate, push changed weights, sleep / wake (scripts/gpu_check_vllm.py). The
#    weight push goes through vLLM V1's collective_rpc with a Python function and tensors, which
#    V1's msgpack serialiser refuses: expect this step to fail at the first push.
# 2. openk1 rl in one process: runs on the CPU (one-process rl has no device setting yet and
#    never moves the model to the GPU).
# 3. openk1 rl under torchrun --nproc_per_node 1: one rank joins no process group, so neither
#    FSDP2 nor NCCL runs; this is the one-process path again, on the CPU.
# 4. openk1 rl --ray, colocated: vLLM rollout actor and trainer (on the CPU) on one GPU; dies at
#    the first weight push, as step 1.
# The GPU work that makes these steps test what their names say is an open issue.
# Needs: pip install -e ".[vllm,ray]"  (vLLM brings a CUDA torch).
set -euo pipefail
MODEL=${1:?usage: scripts/gpu_smoke.sh MODEL_DIR [OUT_DIR]}
OUT=${2:-runs/gpu_smoke}
PY=${PY:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv

$PY - "$OUT/problems.jsonl" <<'PYEOF'
import json, sys
rows = [{"prompt": f"What is {a} + {b}? Put the answer in \\boxed{{}}.", "answer": str(a + b),
         "type": "math", "difficulty": 1} for a in range(10, 20) for b in range(3, 7)]
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
PYEOF

COMMON=(--model "$MODEL" --data "$OUT/problems.jsonl"
        --set iterations=2 prompts_per_iter=4 samples_per_prompt=4 micro_batch_size=4
              sampling.max_new_tokens=64 eval_at_start=false checkpoint_every=2
              optim.lr=1e-6 tau=0.1)

echo "== 1. vLLM engine: generate, load_weights, sleep/wake"
$PY scripts/gpu_check_vllm.py "$MODEL"

echo "== 2. openk1 rl, one process (on the CPU: no device setting yet)"
$PY -m openk1.cli rl "${COMMON[@]}" --out "$OUT/rl_single"

echo "== 3. openk1 rl under torchrun, 1 rank (joins no process group: no NCCL, no FSDP2)"
torchrun --standalone --nproc_per_node 1 -m openk1.cli rl "${COMMON[@]}" --out "$OUT/rl_torchrun"

echo "== 4. openk1 rl --ray, colocated vLLM rollout"
$PY -m openk1.cli rl --ray "${COMMON[@]}" --out "$OUT/rl_ray" \
    --set ray.engine=vllm ray.placement=colocated ray.trainer_gpus=0.5 ray.rollout_gpus=0.5 \
          ray.num_cpus=4 vllm.gpu_memory_utilization=0.35 vllm.max_model_len=1024

echo "gpu smoke: all steps passed; metrics in $OUT/*/metrics.jsonl"
