#!/usr/bin/env bash
# One-GPU check of openk1's GPU paths, with a model built here (no download): docs/gpu.md.
#
#   scripts/gpu_check.sh [--dry-run] [OUT]        # OUT default runs/gpu_check; about 6-9 minutes
#
# Builds a ~50M-parameter Llama (init-model, character tokenizer) and teaches it the demo's
# arithmetic task with long-CoT SFT on the GPU, then checks:
#   (a) HF engine vs vLLM engine log-probs           scripts/gpu_check_vllm.py (NOT RUN without vllm)
#   (b) one-process RL on the GPU                    openk1 rl --set device=cuda
#   (c) colocated RL, GPU memory of each phase       colocate=true, engine vllm (hf without vllm)
#   (d) torchrun, 1 rank: FSDP2 over NCCL            openk1 rl under torchrun + an FSDP2 probe
#   (e) held-out accuracy rises in a short RL run    run (b): final accuracy vs the start evaluation
# and prints a table: rollout / update tokens/s, MFU against the GPU's bf16 peak, memory per phase,
# weight-sync seconds per GB, PASS / FAIL / NOT RUN per check. Exits 1 when a check fails.
# --dry-run prints every command and runs nothing (writes nothing).
#
# Settings (environment): PY (python with openk1 and a CUDA torch; default .venv/bin/python),
# GPU_CHECK_DEVICE (cuda; cpu only to rehearse the script), GPU_CHECK_VLLM (auto | 1 | 0),
# GPU_CHECK_BUDGET_S (600: wall-clock budget of all steps), GPU_CHECK_MODEL_SIZE, GPU_CHECK_SFT_STEPS,
# GPU_CHECK_SFT_EVERY, GPU_CHECK_START_ACC, GPU_CHECK_RL_ITERS, GPU_CHECK_RL_LR, GPU_CHECK_MIN_GAIN,
# GPU_CHECK_VLLM_EAGER, VLLM_CHECK_ARGS (docs/gpu.md).
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
OUT=""
while (( $# )); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [[ -z $OUT ]] || { echo "gpu_check.sh: one OUT directory only" >&2; exit 2; }; OUT=$1 ;;
    esac
    shift
done
OUT=${OUT:-runs/gpu_check}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -z ${PY:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"   # openk1 importable without an install
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET_S=${GPU_CHECK_BUDGET_S:-600}
read -r -a MODEL_SIZE <<< "${GPU_CHECK_MODEL_SIZE:-hidden=768 layers=8 heads=12 kv_heads=4 intermediate=2048 max_positions=4096}"
SFT_STEPS=${GPU_CHECK_SFT_STEPS:-400}
SFT_EVERY=${GPU_CHECK_SFT_EVERY:-50}        # SFT checkpoints RL may start from
START_ACC=${GPU_CHECK_START_ACC:-0.45}     # the start of (e): the checkpoint nearest this accuracy
RL_ITERS=${GPU_CHECK_RL_ITERS:-20}
RL_LR=${GPU_CHECK_RL_LR:-3e-5}
MIN_GAIN=${GPU_CHECK_MIN_GAIN:-0.03}      # held-out accuracy points (as a fraction) RL must add
VLLM_EAGER=${GPU_CHECK_VLLM_EAGER:-true}  # no CUDA graphs in (c): vLLM starts in ~1/3 of the time
read -r -a VLLM_CHECK_EXTRA <<< "${VLLM_CHECK_ARGS:-}"

DATA=$OUT/data
MODEL=$OUT/start_model   # the SFT checkpoint RL starts from (build_model)
RESULTS=$OUT/results
CLI=("$PY" -m openk1.cli)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1)
MAX_NEW=128    # the longest trace (difficulty 3) is 103 characters
# Shared by every RL run: 64 prompts x 8 samples, 2 mini-batches x 2 epochs, k1.5's OPMD at tau 0.5.
# Adam's state is kept across iterations and lr is 3e-5: a model trained from scratch for a minute
# is as fragile as the demo's (presets/demo.yaml explains the departure from the report).
RL_COMMON=(--model "$MODEL" --data "$DATA/train.jsonl" --overwrite
           --set device="$DEVICE" precision=auto prompts_per_iter=64 samples_per_prompt=8 tau=0.5
                 minibatches_per_iter=2 epochs_per_iter=2 micro_batch_size=128 reset_optimizer=false
                 optim.lr="$RL_LR" optim.warmup_steps=0 sampling.max_new_tokens=$MAX_NEW
                 sampling.batch_size=512 checkpoint_every=1000 keep_checkpoints=1)
EVAL_SET=(eval_data="$DATA/heldout.jsonl" eval.samples_per_prompt=4 eval.sampling.max_new_tokens=$MAX_NEW
          eval.sampling.batch_size=800)

START=$SECONDS
declare -A STATUS=()
ORDER=()

quote() { local out; out=$(printf '%q ' "$@"); printf '%s' "${out% }"; }

# run NAME LIMIT_S CMD...: print the command; unless --dry-run, run it within LIMIT_S (and the
# budget left), its output in OUT/logs/NAME.log, whose tail is printed when it fails.
run() {
    local name=$1 limit=$2 left rc=0 t0=$SECONDS
    shift 2
    printf '+ %s\n' "$(quote "$@")"
    (( DRY_RUN )) && return 0
    left=$(( BUDGET_S - (SECONDS - START) ))
    if (( left < limit )); then limit=$left; fi
    if (( limit < 30 )); then
        echo "  $name: not started: the ${BUDGET_S} s budget is spent" | tee "$RESULTS/.budget"
        return 124
    fi
    timeout --kill-after=30 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
    echo "  $name: exit $rc after $(( SECONDS - t0 )) s (log: $OUT/logs/$name.log)"
    if (( rc != 0 )); then
        if (( rc == 124 || rc == 137 )); then echo "  $name: stopped at its time limit (${limit} s)"; fi
        tail -n 40 "$OUT/logs/$name.log" | sed 's/^/    | /'
        { printf '%s exit %s: ' "$name" "$rc"; grep -v '^[[:space:]]*$' "$OUT/logs/$name.log" | tail -n 1 | cut -c1-200; } \
            > "$RESULTS/.lastfail" || true
    fi
    return "$rc"
}

# py NAME ARGS... <<'EOF' (python) EOF: inline python (at most 300 s); one line in --dry-run.
py() {
    local name=$1
    shift
    if (( DRY_RUN )); then
        cat > /dev/null
        printf '+ %s - %s  # inline python: %s\n' "$PY" "$(quote "$@")" "$name"
        return 0
    fi
    timeout --kill-after=10 300 "$PY" - "$@"
}

# note KEY TEXT: the line shown beside the check's result in the final table.
note() { if (( ! DRY_RUN )); then printf '%s\n' "$2" > "$RESULTS/$1.note"; fi; }

# check KEY TITLE FUNCTION: run FUNCTION in a subshell with errexit on (a failing command or
# figure fails the check, not the script); exit 0 PASS, 3 NOT RUN, anything else FAIL.
check() {
    local key=$1 title=$2 fn=$3 rc=0
    ORDER+=("$key")
    echo
    echo "== ($key) $title   [$(( SECONDS - START )) s elapsed]"
    if (( DRY_RUN )); then "$fn" || true; STATUS[$key]="DRY RUN"; return 0; fi
    set +e
    ( set -e; "$fn" )
    rc=$?
    set -e
    case $rc in
        0) STATUS[$key]=PASS ;;
        3) STATUS[$key]="NOT RUN" ;;
        *) STATUS[$key]=FAIL ;;
    esac
    if [[ -f $RESULTS/.budget ]]; then
        STATUS[$key]=FAIL
        note "$key" "not finished within the ${BUDGET_S} s budget (GPU_CHECK_BUDGET_S)"
    elif [[ ${STATUS[$key]} == FAIL && -f $RESULTS/.lastfail ]]; then
        cat "$RESULTS/.lastfail" >> "$RESULTS/$key.note"
    fi
    rm -f "$RESULTS/.budget" "$RESULTS/.lastfail"
    printf '%s\t%s\t%s\n' "$key" "${STATUS[$key]}" "$title" >> "$RESULTS/status.tsv"
    echo "== ($key) ${STATUS[$key]}"
}

# ---------------------------------------------------------------------------------------------
# the steps

preflight() {
    if (( DRY_RUN )); then
        echo "+ nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader"
    elif [[ $DEVICE == cpu ]]; then
        echo "GPU_CHECK_DEVICE=cpu: a rehearsal of the script on the CPU; its figures say nothing about GPUs"
        echo "cpu" > "$RESULTS/gpu_name"
    else
        if ! command -v nvidia-smi > /dev/null; then
            note 0 "nvidia-smi not found: no NVIDIA driver here (GPU_CHECK_DEVICE=cpu only rehearses the script)"
            return 1
        fi
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
        nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 > "$RESULTS/gpu_name"
    fi
    py versions "$DEVICE" <<'EOF'
import importlib.util
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.device_count()} GPUs visible")
if sys.argv[1] != "cpu" and not torch.cuda.is_available():
    sys.exit("FAIL: torch sees no GPU (a CPU-only torch, or no driver); the checks need CUDA")
if importlib.util.find_spec("openk1") is None:
    sys.exit("FAIL: openk1 is not importable")
EOF
    # the GPU's bf16 peak: a table of dense tensor-core figures, else (or also) a measured matmul
    py peak "$RESULTS/gpu_name" "$RESULTS/peak.json" <<'EOF'
import json
import re
import sys
import time
from pathlib import Path

import torch

name = Path(sys.argv[1]).read_text().strip()
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets
TABLE = [(r"H200 NVL", 835.0), (r"H200", 989.0), (r"H100 NVL", 835.0), (r"H100 PCIe", 756.0),
         (r"H100", 989.0), (r"A100", 312.0), (r"L40S", 362.0), (r"\bL40\b", 181.0), (r"\bL4\b", 121.0),
         (r"4090", 165.0)]
table = next((v for pattern, v in TABLE if re.search(pattern, name, re.I)), None)
cuda = torch.cuda.is_available() and name != "cpu"
n = 8192 if cuda else 1024
device = "cuda" if cuda else "cpu"
a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
sync = torch.cuda.synchronize if cuda else (lambda: None)
for _ in range(3):
    a @ b
sync()
best = 0.0
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t0))
measured = best / 1e12
peak = table if table is not None else measured
source = "data-sheet table" if table is not None else f"measured ({n}^3 bf16 matmul)"
json.dump({"gpu": name, "table_tflops": table, "measured_tflops": measured, "peak_tflops": peak,
           "source": source}, open(sys.argv[2], "w"))
print(f"GPU: {name}; bf16 peak {peak:.0f} TFLOP/s ({source}); measured matmul {measured:.0f} TFLOP/s")
EOF
}

vllm_available() {   # sets VLLM_OK (1/0) and VLLM_WHY
    local want=${GPU_CHECK_VLLM:-auto} out
    VLLM_OK=0
    VLLM_WHY=""
    case $want in
        0|no|false) VLLM_WHY="GPU_CHECK_VLLM=$want" ;;
        1|yes|true) VLLM_OK=1 ;;
        *)
            if (( DRY_RUN )); then   # no import in a dry run: is the package there at all
                if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)" \
                        2>/dev/null; then VLLM_OK=1; else VLLM_WHY="vllm is not installed"; fi
            elif out=$(timeout 300 "$PY" -c "import vllm; print(vllm.__version__)" 2>&1); then
                VLLM_OK=1
                echo "vllm ${out##*$'\n'}"
            else
                VLLM_WHY="vllm is not importable: $(printf '%s' "$out" | tail -n 1)"
            fi ;;
    esac
    if (( ! VLLM_OK )); then
        echo "vLLM: $VLLM_WHY (pip install -e '.[vllm]'): check (a) is NOT RUN, (c) uses the HF engine"
    fi
}

build_model() {
    # the demo's synthetic task (openk1 demo's data builder): difficulties 1-3, traces with no
    # re-verification lines (presets/demo_plain.yaml), 4,000 training and 200 held-out problems
    py make_data "$OUT" <<'EOF'
import sys
from pathlib import Path

from openk1.config import build
from openk1.stages.demo import DemoConfig, make_data

task = {"train_problems": 4000, "heldout_problems": 200, "min_difficulty": 1, "max_difficulty": 3,
        "reflection_rate": 0.0}
corpus = {"base_docs": 100, "cooldown_docs": 100, "long_docs": 10}   # written, not used here
paths = make_data(build(DemoConfig, {"task": task, "corpus": corpus}), Path(sys.argv[1]))
print("data:", ", ".join(f"{k} {paths[k]}" for k in ("train", "heldout", "longcot")))
EOF
    run init_model 120 "${CLI[@]}" init-model --out "$OUT/init_model" --overwrite --set "${MODEL_SIZE[@]}"
    # long-CoT SFT from the random init on the GPU (the demo's longcot_sft, without pretraining),
    # a checkpoint every SFT_EVERY steps
    run sft 300 "${CLI[@]}" sft --model "$OUT/init_model" --data "$DATA/longcot.jsonl" --out "$OUT/sft" \
        --overwrite --set device="$DEVICE" precision=auto batch_size=64 epochs=20 max_steps="$SFT_STEPS" \
        max_response_tokens=$MAX_NEW optim.lr=1e-3 optim.lr_min=1e-4 optim.warmup_steps=20 log_every=10 \
        checkpoint_every="$SFT_EVERY" keep_checkpoints=0
    # RL starts from the checkpoint whose held-out accuracy is nearest START_ACC: room to rise (e)
    # and reward to learn from, whatever speed the SFT learned at
    py pick_start "$OUT" "$DEVICE" "$START_ACC" "$MAX_NEW" "$RESULTS/model.json" <<'EOF'
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from openk1.checkpoint import list_checkpoints
from openk1.data.io import load_problems
from openk1.distributed.runtime import resolve_device
from openk1.models.io import load_model
from openk1.stages.eval import EvalSettings, evaluate

out, device, target, max_new = Path(sys.argv[1]), resolve_device(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
heldout = load_problems(str(out / "data" / "heldout.jsonl"))
settings = EvalSettings(samples_per_prompt=4, sampling={"max_new_tokens": max_new, "batch_size": 800})
candidates = []
for checkpoint in list_checkpoints(out / "sft"):
    t0 = time.perf_counter()
    model, tokenizer = load_model(checkpoint / "model", device=device)
    accuracy = evaluate(model, tokenizer, heldout, settings)["accuracy"]
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    candidates.append((step, accuracy, checkpoint / "model"))
    print(f"sft step {step}: held-out accuracy {100 * accuracy:.1f}% ({time.perf_counter() - t0:.1f} s)")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
if not candidates:
    sys.exit("FAIL: the SFT run wrote no checkpoint")
step, accuracy, chosen = min(candidates, key=lambda c: (abs(c[1] - target), -c[0]))
start = out / "start_model"
shutil.rmtree(start, ignore_errors=True)
shutil.copytree(chosen, start)
for extra in (out / "sft" / "model").iterdir():   # the prompt-format record the final save adds
    if not (start / extra.name).exists():
        shutil.copy2(extra, start / extra.name)
_, tokenizer = load_model(start)
prompts = [p.prompt for p in load_problems(str(out / "data" / "train.jsonl"))]
prompt_tokens = statistics.mean(len(tokenizer(p)["input_ids"]) for p in prompts)
init = json.loads((out / "init_model" / "summary.json").read_text())
sft = json.loads((out / "sft" / "summary.json").read_text())
json.dump({"parameters": init["parameters"], "start_step": step, "start_accuracy": accuracy,
           "candidates": [[s, a] for s, a, _ in candidates], "sft_seconds": sft.get("wall_seconds"),
           "sft_forward": sft.get("forward"), "prompt_tokens": prompt_tokens}, open(sys.argv[5], "w"))
print(f"model: {init['parameters'] / 1e6:.1f}M parameters; RL starts from SFT step {step} "
      f"({100 * accuracy:.1f}% held-out, target {100 * target:.0f}%): {start}")
if not 0.1 <= accuracy <= 0.85:
    print("warning: no SFT checkpoint between 10% and 85%: check (e) has little room or little signal")
EOF
}

# figures RUN KEY ENGINE: check the run's metrics and write its figures to RESULTS/KEY.json
figures() {
    py "figures of $1" "$OUT/$1" "$2" "$3" "$DEVICE" "$RESULTS" <<'EOF'
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

run, key, engine, device, results = Path(sys.argv[1]), *sys.argv[2:5], Path(sys.argv[5])
model = json.loads((results / "model.json").read_text())
peak = json.loads((results / "peak.json").read_text())["peak_tflops"] * 1e12
cfg = yaml.safe_load((run / "config.yaml").read_text())
summary = json.loads((run / "summary.json").read_text())
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
iters = [r for r in rows if "time/rollout" in r]
fails = []
if len(iters) != cfg["iterations"]:
    fails.append(f"{len(iters)} iteration rows in metrics.jsonl, {cfg['iterations']} expected")


def finite(row, name, positive=False):
    value = row.get(name)
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 or not positive)
    if not ok:
        fails.append(f"iteration {row.get('iteration', row.get('step'))}: {name} = {value!r}")
    return value if ok else float("nan")


def phase_memory(r, phase):
    """GB the device held in `phase`: the CUDA allocator's peak (memory/<phase>_peak_allocated_gb),
    else memory/<phase>_gb."""
    name = next((n for n in (f"memory/{phase}_peak_allocated_gb", f"memory/{phase}_gb") if n in r),
                f"memory/{phase}_gb")
    return finite(r, name, positive=True)


gpu = device != "cpu"
state = ("memory/rollout_train_state_gb", "memory/update_train_state_gb")
for r in iters:
    finite(r, "throughput/generated_tokens_per_s", positive=True)
    if r.get("update/steps"):
        finite(r, "update/loss")
    if gpu:
        phase_memory(r, "rollout")
        phase_memory(r, "update")
    if engine == "vllm":   # an engine with its own weights gets them after every update
        finite(r, "time/weight_sync")
    if key == "c" and gpu and r.get("update/steps"):   # colocated: the trainer's state left the GPU
        if not all(k in r for k in state):
            fails.append(f"iteration {r.get('iteration')}: no {state[0]} / {state[1]} to check the offload")
        elif not r[state[0]] < r[state[1]]:
            fails.append(f"iteration {r.get('iteration')}: trainer state on the GPU in the rollout "
                         f"({r[state[0]]:.3f} GB) not below the update's ({r[state[1]]:.3f} GB): nothing offloaded")
forward = summary.get("forward", {})
if not forward.get("rollout") or not forward.get("update"):
    fails.append(f"summary.json forward lacks rollout/update: {forward}")
if engine == "vllm" and "vllm" not in str(forward.get("rollout", "")):
    fails.append(f"engine vllm asked for, rollout forward is {forward.get('rollout')!r}")
if key == "d" and "fsdp" not in str(forward.get("update", "")).lower():
    fails.append(f"under torchrun the update should run on FSDP2 shards; its forward is {forward.get('update')!r}")
steady = iters[1:] if len(iters) > 1 else iters   # the first iteration warms up (CUDA, allocator)


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(values) if values else float("nan")


B = cfg["prompts_per_iter"] * cfg["samples_per_prompt"]


def update_tokens_per_s(r):
    """Prompt + response tokens the update's forward/backward passes processed, per second."""
    given = next((v for k, v in r.items() if k.startswith("throughput/") and "update" in k), None)
    if given is not None:
        return given
    if not r.get("update/steps") or not r.get("time/update"):
        return float("nan")
    per_step = B / cfg["minibatches_per_iter"] * (model["prompt_tokens"] + r["response_tokens/mean"])
    return r["update/steps"] * per_step / r["time/update"]


N = model["parameters"]
rollout_tps = median([r.get("throughput/generated_tokens_per_s") for r in steady])
update_tps = median([update_tokens_per_s(r) for r in steady])
sync_s = median([r.get("time/weight_sync") for r in steady])
sync_gb = median([r.get("weight_sync/gb") for r in steady]) * 2**30 / 1e9   # logged in GiB
if not math.isfinite(sync_gb):
    sync_gb = N * 4 / 1e9   # the fp32 state dict
memory = {k: max(r[k] for r in iters if k in r) for k in sorted({k for r in iters for k in r})
          if k.startswith("memory/")}
figures = {"run": run.name, "check": key, "engine": engine, "iterations": len(iters),
           "rollout_tokens_per_s": rollout_tps, "update_tokens_per_s": update_tps,
           "rollout_mfu": 2 * N * rollout_tps / peak, "update_mfu": 6 * N * update_tps / peak,
           "memory_gb": memory, "weight_sync_s": sync_s, "weight_sync_s_per_gb": sync_s / sync_gb,
           "forward": forward, "accuracy": summary.get("accuracy"), "failures": fails}
json.dump(figures, open(results / f"{key}.json", "w"))
print(json.dumps({k: v for k, v in figures.items() if k != "failures"}))
for line in fails[:20]:
    print("FAIL:", line)
sys.exit(1 if fails else 0)
EOF
}

check_b() {   # one-process RL on the GPU, HF engine; its held-out evaluations serve (e)
    run rl_gpu 300 "${CLI[@]}" rl "${RL_COMMON[@]}" iterations="$RL_ITERS" eval_every=5 eval_at_start=true \
        "${EVAL_SET[@]}" --out "$OUT/rl_gpu"
    figures rl_gpu b hf
}

check_e() {   # held-out accuracy of run (b): its summary vs the start evaluation (metrics.jsonl step 0)
    py accuracy_rise "$OUT/rl_gpu" "$MIN_GAIN" "$RESULTS/e.json" <<'EOF'
import json
import sys
from pathlib import Path

run, gain_needed = Path(sys.argv[1]), float(sys.argv[2])
if not (run / "summary.json").is_file():
    sys.exit(f"FAIL: {run}/summary.json missing: run (b) did not finish")
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
curve = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
start = next((acc for step, acc in curve if step == 0), None)
final = json.loads((run / "summary.json").read_text()).get("accuracy")
print("held-out accuracy by iteration:", ", ".join(f"{s}: {100 * a:.1f}%" for s, a in curve))
if start is None or final is None:
    sys.exit(f"FAIL: no start evaluation (step 0) or no final accuracy (start {start}, final {final})")
json.dump({"start": start, "final": final, "gain": final - start, "needed": gain_needed, "curve": curve},
          open(sys.argv[3], "w"))
summary = f"{100 * start:.1f}% -> {100 * final:.1f}% ({100 * (final - start):+.1f} points, {100 * gain_needed:+.1f} needed)"
Path(sys.argv[3]).with_suffix(".note").write_text(summary + "\n")
print("held-out accuracy", summary)
if start > 0.9:
    print("note: the start is above 90%: little room to rise (GPU_CHECK_START_ACC, GPU_CHECK_SFT_STEPS)")
sys.exit(0 if final - start >= gain_needed else 1)
EOF
}

check_c() {   # colocated: training and inference share the GPU in turn (report §2.6.3)
    local engine=hf
    if (( VLLM_OK )); then engine=vllm; else note c "engine hf: $VLLM_WHY"; fi
    run rl_colocate 300 "${CLI[@]}" rl "${RL_COMMON[@]}" iterations=4 colocate=true engine=$engine \
        vllm.gpu_memory_utilization=0.3 vllm.max_model_len=512 vllm.enforce_eager="$VLLM_EAGER" \
        --out "$OUT/rl_colocate"
    figures rl_colocate c $engine
}

check_d() {   # torchrun with one rank: the CLI's RL, then FSDP2 itself over NCCL
    run rl_torchrun 240 "${TORCHRUN[@]}" -m openk1.cli rl "${RL_COMMON[@]}" iterations=3 \
        --out "$OUT/rl_torchrun"
    figures rl_torchrun d hf
    if (( DRY_RUN )); then
        echo "+ (write $OUT/fsdp_probe.py)"
    else
        cat > "$OUT/fsdp_probe.py" <<'EOF'
"""Under torchrun (1 rank): a process group (nccl on a GPU), FSDP2 shards of the SFT model
(distributed/fsdp.py), one bf16-autocast AdamW step, and the full-weight gather (sync_weights'
all-gather) timed; figures to argv[2]."""
import copy
import json
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from openk1.distributed import fsdp, runtime
from openk1.models.io import load_model

cuda = torch.cuda.is_available() and sys.argv[3] != "cpu"
backend = "nccl" if cuda else "gloo"
device = runtime.device() if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group(backend)
model, tokenizer = load_model(sys.argv[1])
trainee = fsdp.shard_model(copy.deepcopy(model).to(device))
sharded = all(isinstance(p, DTensor) for p in trainee.parameters())
before = {k: v.clone() for k, v in fsdp.full_state_dict(trainee).items()}
optimizer = torch.optim.AdamW(trainee.parameters(), lr=1e-4)
ids = torch.randint(4, len(tokenizer), (8, 128), device=device, generator=None)
with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
    loss = trainee(input_ids=ids, labels=ids).loss
loss.backward()
optimizer.step()
after = fsdp.full_state_dict(trainee)
moved = any(not torch.equal(before[k], after[k]) for k in before)
seconds = []
for _ in range(3):
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fsdp.full_state_dict(trainee)
    seconds.append(time.perf_counter() - t0)
gb = sum(v.numel() * v.element_size() for v in after.values()) / 1e9
figures = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "sharded": sharded,
           "loss": float(loss), "weights_moved": moved, "gather_s": statistics.median(seconds),
           "gather_gb": gb, "gather_s_per_gb": statistics.median(seconds) / gb}
json.dump(figures, open(sys.argv[2], "w"))
print(json.dumps(figures))
dist.barrier()
dist.destroy_process_group()
ok = sharded and moved and torch.isfinite(loss) and figures["backend"] == backend
sys.exit(0 if ok else "FAIL: FSDP2 probe: not sharded, non-finite loss or the step moved nothing")
EOF
    fi
    run fsdp_probe 180 "${TORCHRUN[@]}" "$OUT/fsdp_probe.py" "$MODEL" "$RESULTS/d_probe.json" "$DEVICE"
}

check_a() {   # HF vs vLLM log-probs of the same tokens (scripts/gpu_check_vllm.py)
    if (( ! VLLM_OK )); then
        note a "NOT RUN: $VLLM_WHY"
        echo "vLLM check skipped: $VLLM_WHY"
        return 3
    fi
    run vllm_check 300 "$PY" scripts/gpu_check_vllm.py "$MODEL" "${VLLM_CHECK_EXTRA[@]}"
}

table() {
    py table "$RESULTS" "$OUT" <<'EOF'
import json
import math
import sys
from pathlib import Path

results, out = Path(sys.argv[1]), sys.argv[2]


def load(name):
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else {}


def f(value, fmt):
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def memory(mem, phase):
    """`peak / trainer state` GB of a phase (the largest over the iterations)."""
    peak = mem.get(f"memory/{phase}_peak_allocated_gb", mem.get(f"memory/{phase}_gb"))
    return f"{f(peak, '.2f')} / {f(mem.get(f'memory/{phase}_train_state_gb'), '.2f')}"


peak, model, probe = load("peak.json"), load("model.json"), load("d_probe.json")
print(f"\n## openk1 GPU check ({out})\n")
if peak:
    print(f"GPU {peak['gpu']}: bf16 peak {peak['peak_tflops']:.0f} TFLOP/s ({peak['source']}; "
          f"measured matmul {peak['measured_tflops']:.0f} TFLOP/s)")
if model:
    steps = ", ".join(f"{s}: {100 * a:.0f}%" for s, a in model["candidates"])
    print(f"model {model['parameters'] / 1e6:.1f}M parameters; long-CoT SFT in {f(model.get('sft_seconds'), '.0f')} s, "
          f"held-out accuracy by step {steps}; RL starts from step {model['start_step']}")
runs = [load(f"{key}.json") for key in ("b", "c", "d")]
if any(runs) or probe:
    print("\nMFU: matmul FLOPs (2N per generated token, 6N per trained token) over the bf16 peak. Memory: "
          "the phase's CUDA peak allocated / the trainer's state on the GPU, GB. Weight sync: seconds per "
          "iteration and per GB of the state dict pushed to the engine (vLLM only)\n")
    print("| run | check | engine | rollout tok/s | rollout MFU | update tok/s | update MFU | "
          "memory rollout GB | memory update GB | weight sync s | s per GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
for key, r in zip(("b", "c", "d"), runs):
    if not r:
        continue
    mem = r.get("memory_gb", {})
    print(f"| {r['run']} | {key} | {r['engine']} | {f(r['rollout_tokens_per_s'], ',.0f')} | "
          f"{f(r['rollout_mfu'], '.2%')} | {f(r['update_tokens_per_s'], ',.0f')} | "
          f"{f(r['update_mfu'], '.2%')} | {memory(mem, 'rollout')} | "
          f"{memory(mem, 'update')} | {f(r['weight_sync_s'], '.3f')} | "
          f"{f(r['weight_sync_s_per_gb'], '.3f')} |")
if probe:
    print(f"| FSDP2 probe ({probe['backend']}, {probe['world_size']} rank) | d | - | - | - | - | - | - | - | "
          f"{f(probe['gather_s'], '.3f')} | {f(probe['gather_s_per_gb'], '.3f')} |")
print("\n| check | result | note |\n|---|---|---|")
rows = [line.split("\t") for line in (results / "status.tsv").read_text().splitlines() if line.strip()]
for key, status, title in rows:
    note_path = results / f"{key}.note"
    extra = note_path.read_text().strip() if note_path.is_file() else ""
    failures = load(f"{key}.json").get("failures") or []
    if failures and status == "FAIL":
        extra = (extra + "; " if extra else "") + failures[0]
    print(f"| ({key}) {title} | {status} | {extra} |")
print(f"\nlogs: {out}/logs/; figures: {out}/results/")
EOF
}

# ---------------------------------------------------------------------------------------------

if (( ! DRY_RUN )); then
    mkdir -p "$OUT/logs" "$RESULTS"
    rm -f "$RESULTS"/*.json "$RESULTS"/*.note "$RESULTS/status.tsv" "$RESULTS/.budget"
fi
MODE=""
if (( DRY_RUN )); then MODE=", dry run: nothing is run"; fi
echo "openk1 GPU check -> $OUT (budget ${BUDGET_S} s, device $DEVICE)$MODE"

# give_up WHY KEY...: the checks KEY... fail unrun; the table; exit 1
give_up() {
    local why=$1 key
    shift
    for key in "$@"; do
        printf '%s\t%s\t%s\n' "$key" FAIL "not run: $why" >> "$RESULTS/status.tsv"
    done
    table
    exit 1
}

check 0 "preflight: GPU, torch, bf16 peak" preflight
if (( ! DRY_RUN )) && [[ ${STATUS[0]} != PASS ]]; then give_up "the preflight failed" m a b c d e; fi
vllm_available
check m "model: demo task data, init-model, long-CoT SFT on the GPU" build_model
if (( ! DRY_RUN )) && [[ ${STATUS[m]} != PASS ]]; then give_up "no model (step m)" a b c d e; fi

check b "one-process RL on the GPU (device=$DEVICE, engine hf)" check_b
check e "held-out accuracy rises in a short RL run (run b, +${MIN_GAIN} needed)" check_e
check d "torchrun, 1 rank: openk1 rl + FSDP2 probe" check_d
check a "HF engine vs vLLM engine log-probs (scripts/gpu_check_vllm.py)" check_a
check c "colocated RL, memory of each phase (colocate=true)" check_c

if (( DRY_RUN )); then
    echo
    echo "dry run: checks 0 m b e d a c printed; nothing was run"
    exit 0
fi
table
echo "total $(( SECONDS - START )) s"
for key in "${ORDER[@]}"; do
    if [[ ${STATUS[$key]} == FAIL ]]; then exit 1; fi
done
exit 0
