"""`openk1 rl`: Kimi k1.5 online policy mirror descent (report §2.3).

Each iteration i:
  1. sample `prompts_per_iter` problems (uniform, curriculum or prioritized: `sampler`); the
     current policy pi_theta_i writes k responses each (optionally stopped when repeating).
     With `partial` rollouts on, every response gets at most `segment_tokens` new tokens per
     iteration and a cut one is continued in the next (rollout/partial.py): a prompt's k
     responses are trained together in the iteration the last of them finishes;
  2. verify them (the same verifiers as `openk1 eval`), add the length penalty if it is on
     and subtract `repeat_penalty` from responses stopped for repeating;
  3. advantages r_j - b with b the per-prompt mean reward (or tau log Z);
  4. log pi_theta_i of every response is frozen: the rollout's own log-probs, no extra pass
     (of the tempered distribution sampled, softmax(z / T); the update computes log pi_theta
     at the same T, and top_p < 1 is refused);
  5. `minibatches_per_iter` x `epochs_per_iter` optimizer steps on the OPMD surrogate
     -(r - b) l + tau/2 (l - l_old)^2 (gradient clipping; a non-finite loss skips the step, and
     so does a mini-batch with no signal: all advantages 0 before any step of the iteration);
  6. the updated policy is the next iteration's reference; the optimizer is reset
     (`reset_optimizer`, default true as in the report).
No value network, no PPO ratio, no clipping of the objective.

Departures from the report, all documented choices: the report does not give tau, k, batch
sizes, learning rate, steps per iteration or temperature; defaults here are ours, sized for
the CPU demo. The log-ratio level (sequence as written, or token) is an option. The demo preset
keeps Adam's state across iterations (`reset_optimizer: false`): measured in docs/demo.md.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from openk1.algo.aggregate import global_normaliser
from openk1.algo.opmd import compute_advantages, opmd_loss
from openk1.checkpoint import check_resume_step, latest_checkpoint
from openk1.config import StageConfig
from openk1.data.images import ImageRef
from openk1.data.io import load_problems
from openk1.data.samplers import Sampler, SamplerConfig, make_sampler, sampler_metrics
from openk1.data.sources import DataSource
from openk1.distributed import fsdp, runtime
from openk1.distributed.colocate import TrainState, phase_memory, start_phase
from openk1.distributed.rollout import ShardedEngine
from openk1.distributed.settings import RaySettings
from openk1.errors import OpenK1Error
from openk1.frame import StageRun
from openk1.loop import Loop
from openk1.models.forward import PRECISIONS, forward_path, is_vlm, response_logprobs, tokenize, trim
from openk1.models.io import load_model, processor_of
from openk1.models.prompting import PromptSettings
from openk1.models.vlm import freeze_vision_tower, prompt_tokens
from openk1.optim import OptimConfig, make_optimizer
from openk1.report.plots import plot_curves
from openk1.rewards.length import length_penalty_weight, length_rewards
from openk1.rewards.scoring import RewardConfig, Scorer, score_many
from openk1.rollout import partial
from openk1.rollout.engine import EngineFactory, RolloutEngine
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.rollout.partial import Group, PartialConfig, ReplayBuffer
from openk1.rollout.vllm_engine import VLLMSettings
from openk1.stages.eval import EvalSettings, by_difficulty, evaluate
from openk1.types import Problem, Rollout


class RLConfig(StageConfig):
    # --resume may raise or lower `iterations` (not below the checkpoint) and change when the
    # held-out set is evaluated: evaluation samples from its own seeded streams
    resume_may_change = (*StageConfig.resume_may_change, "iterations", "eval_every", "eval_at_start")

    eval_data: DataSource = Field(DataSource(), description="held-out problems for accuracy (a path or a data source)")
    iterations: int = Field(20, gt=0, description="RL iterations (rollout, reward, update)")
    prompts_per_iter: int = Field(32, gt=0, description="prompts drawn per iteration")
    samples_per_prompt: int = Field(8, gt=0, description="k responses per prompt")
    tau: float = Field(0.5, ge=0.0, description='KL weight; its scale depends on logratio_level (docs/rl.md)')
    baseline: Literal["mean", "log_z"] = Field(
        "mean", description="reward baseline: the group's mean (the report's choice in practice) or tau log Z")
    logratio_level: Literal["sequence", "token"] = Field(
        "sequence", description="log-ratio per sequence (the report's equation) or per token")
    aggregation: Literal["seq_mean", "token_mean", "seq_mean_token_mean"] = Field(
        "seq_mean", description="how per-token loss terms reduce to one loss (algo/aggregate.py)")
    minibatches_per_iter: int = Field(2, gt=0, description="minibatches each iteration's responses are split into")
    epochs_per_iter: int = Field(2, gt=0, description="passes over them; optimizer steps = minibatches x epochs")
    micro_batch_size: int = Field(64, ge=0, description="responses per forward/backward (0 = the whole minibatch)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: mixed precision in rollout and update (fp32 master weights); auto: bf16 on CUDA")
    compile: bool = Field(False, description="torch.compile the update's layers (Llama-family; models/lean.py)")
    rollout_compile: bool = Field(
        False, description="engine hf: the lean decode step through torch.compile with the sampling fused in "
                           "(models/lean_compiled.py; top_p 1; CUDA graphs on CUDA). On a CPU core the demo's "
                           "rollout decodes 1.24-1.49x faster after 28-34 s of compilation per process (3-7 s "
                           "from inductor's disk cache, ~/.cache/openk1/inductor): more than the demo's 20 "
                           "iterations win back (~0.3 s each), hence off (docs/performance.md)")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="rollout engine of `openk1 rl` (rl --ray: ray.engine): hf, the trainer's own model; vllm, "
                          "an in-process vLLM on this rank's GPU with its own weights, pushed after each iteration")
    colocate: bool = Field(
        False, description="training and inference take turns on the device (report §2.6.3): the trainer's "
                           "optimizer state (and weights, with engine vllm) offloaded during rollout, vLLM asleep "
                           "during the update (distributed/colocate.py)")
    lean: bool = Field(True, description="the update's forward on models/lean.py (Llama-family); false: HF's")
    freeze_vision: bool = Field(
        False, description="a vision-language model's vision tower gets no gradient (the projector and language "
                           "model still train); false: trained jointly, as in the report (docs/vision.md)")
    reset_optimizer: bool = Field(
        True, description="fresh optimizer each iteration (report: each iteration is a new problem)")
    optim: OptimConfig = Field(OptimConfig(lr=1e-6, warmup_steps=0),
                               description="AdamW (defaults: a pretrained checkpoint's, as verl and TRL)")
    sampling: SamplingConfig = Field(SamplingConfig(max_new_tokens=512),
                                     description="rollout sampling (temperature > 0, top_p 1)")
    partial: PartialConfig = Field(PartialConfig(), description="partial rollouts (report §2.6), off by default")
    length_penalty_weight: float = Field(0.0, ge=0.0,
                                         description="weight of the length reward (report §2.3.3); 0 = off")
    length_penalty_warmup: int = Field(0, ge=0, description="iterations of plain RL before it turns on")
    repeat_penalty: float = Field(0.0, ge=0.0, description="subtracted from responses stopped for repeating")
    sampler: SamplerConfig = Field(SamplerConfig(), description="uniform | curriculum | prioritized (report §2.3.4)")
    rewards: RewardConfig = Field(RewardConfig(), description="reward terms per problem type (also used by eval)")
    eval_every: int = Field(5, gt=0, description="iterations between held-out evaluations")
    eval_at_start: bool = Field(True, description="evaluate before the first iteration")
    eval: EvalSettings = Field(EvalSettings(), description="held-out evaluation settings")
    checkpoint_every: int = Field(5, gt=0, description="iterations between checkpoints")
    keep_checkpoints: int = Field(2, ge=0, description="newest checkpoints kept (0 = all)")
    score_workers: int = Field(0, ge=0, description="> 0: verifiers in that many processes")
    ray: RaySettings = Field(RaySettings(),
                             description="`openk1 rl --ray`: actors and their resources (distributed/settings.py)")
    vllm: VLLMSettings = Field(VLLMSettings(),
                               description="ray.engine vllm: the engine's settings (rollout/vllm_engine.py)")

    @model_validator(mode="after")
    def _sampling_and_baseline(self) -> RLConfig:
        if self.sampling.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0 for RL (greedy decoding gives a "
                             f"prompt k identical responses), got {self.sampling.temperature}")
        if self.baseline == "log_z" and self.tau <= 0:
            raise ValueError(f"baseline log_z needs tau > 0, got {self.tau}")
        return self

    @model_validator(mode="after")
    def _no_nucleus(self) -> RLConfig:
        # log pi_theta_i and log pi_theta are those of softmax(z / T) (rollout/hf.py); the
        # nucleus-truncated distribution's are not, and the update could not reproduce them
        if self.sampling.top_p < 1:
            raise ValueError(f"sampling.top_p < 1 (got {self.sampling.top_p}) is not supported in RL: "
                             "the loss needs the log-probs of the distribution sampled, and the "
                             "nucleus-truncated one's are not those of any temperature (set top_p: 1)")
        return self


PLOTTED = ["reward/mean", "eval/accuracy", "response_tokens/mean", "update/opmd/kl_old_new_per_token"]


def rewards_for(rollout: Rollout, problems: list[Problem], k: int, iteration: int,
                cfg: RLConfig, score: Scorer | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Verified rewards [B] (+ the length penalty once it is on), correctness [B] and metrics.

    `score` (default `score_many`) verifies; `openk1 rl --ray` passes its reward actors."""
    repeated = [p for p in problems for _ in range(k)]
    scorer: Scorer = score or score_many
    scores = runtime.shard_map(   # each rank verifies its share; scores gathered in order
        lambda texts, probs: scorer(texts, probs, cfg.score_workers, rewards=cfg.rewards),
        rollout.texts, repeated)
    correct = torch.tensor([s.reward >= 1.0 for s in scores], device="cpu")
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32, device="cpu")
    weight = length_penalty_weight(iteration, cfg.length_penalty_weight, cfg.length_penalty_warmup)
    group_ids = torch.arange(len(problems), device="cpu").repeat_interleave(k)
    if weight > 0:
        rewards = rewards + weight * length_rewards(rollout.lengths, correct, group_ids).float()
    if cfg.repeat_penalty:
        repeats = torch.tensor([s == "repeat" for s in rollout.stop_reason], device="cpu").float()   # [B]
        rewards = rewards - cfg.repeat_penalty * repeats
    return rewards, correct, {"reward/length_weight": weight}


def update(loop: Loop, rollout: Rollout, advantages: torch.Tensor, cfg: RLConfig,
           generator: torch.Generator) -> dict[str, float]:
    """Up to M = minibatches x epochs optimizer steps of `loop` on the OPMD surrogate; returns metrics.

    A mini-batch whose advantages are all exactly 0 is skipped (no forward, no step) as long as
    no step has moved the weights in this iteration: at theta = theta_i its gradient is the tau
    term's alone, 0 but for the float noise between the rollout's log-probs and the training
    forward's, which Adam would turn into lr-sized steps. Once a step has moved the weights, a
    flat mini-batch steps (the tau term pulls back towards the reference). The decision reads
    the whole mini-batch's advantages, not this rank's share: every rank takes the same one.

    Metrics: `update/steps` (optimizer steps taken), `update/skipped` (mini-batches skipped for a
    non-finite loss or gradient), `update/skipped_no_signal` (mini-batches skipped for all-zero
    advantages), and `update/{loss,grad_norm,lr,opmd/*}`: means over the steps taken (absent
    when none was).
    """
    B = advantages.shape[0]
    totals: dict[str, float] = {}
    steps = skipped = no_signal = 0
    loop.trainee.train()
    for _ in range(cfg.epochs_per_iter):
        for minibatch in torch.randperm(B, generator=generator, device="cpu").chunk(cfg.minibatches_per_iter):
            if steps == 0 and not bool(advantages[minibatch].ne(0).any()):   # NaN != 0: not flat
                no_signal += 1
                continue
            stats = minibatch_step(loop, rollout, advantages, runtime.shard(minibatch), cfg,
                                   iteration_lr(steps, cfg.optim))
            if stats.pop("skipped", 0.0):   # non-finite: the weights did not move
                skipped += 1
                continue
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    return ({f"update/{k}": v / steps for k, v in totals.items()} |
            {"update/steps": steps, "update/skipped": skipped, "update/skipped_no_signal": no_signal})


def iteration_lr(step: int, optim: OptimConfig) -> float:
    """Linear warm-up over the first `warmup_steps` optimizer steps of every iteration.

    After a reset, Adam's first steps move every weight by about lr whatever its gradient's
    size (m / sqrt(v) is +-1); ramping the LR over the iteration's first steps tames that.

    >>> [iteration_lr(s, OptimConfig(lr=1.0, warmup_steps=4)) for s in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return optim.lr * min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else optim.lr


def minibatch_step(loop: Loop, rollout: Rollout, advantages: torch.Tensor, index: torch.Tensor,
                   cfg: RLConfig, lr: float) -> dict[str, float]:
    """One optimizer step of `loop` at `lr` over `index` (this rank's share of the mini-batch
    under torchrun)."""
    return loop.step(0, lr, functools.partial(_minibatch_backward, loop.trainee, rollout, advantages, index, cfg,
                                              processor=processor_of(loop.tokenizer)))


def _minibatch_backward(model: Any, rollout: Rollout, advantages: torch.Tensor, index: torch.Tensor,
                        cfg: RLConfig, _step: int, processor: Any = None) -> dict[str, float]:
    """The backward of one mini-batch, accumulated over micro-batches with one normaliser
    counted over all ranks; `skipped` = 1 when the loss is not finite on some rank. Rows with
    images (a VLM) are scored with their images' features (`processor`: the VLM's)."""
    normaliser = global_normaliser(cfg.aggregation, rollout.action_mask[index], all_reduce=True)
    device = next(model.parameters()).device
    loss_sum, finite, rows = 0.0, True, 0
    metric_sums: dict[str, float] = {}
    index = by_length(index, rollout)   # micro-batches of similar lengths: less padding after trim
    for micro, weight in runtime.micro_batches(index, cfg.micro_batch_size):
        prompt_ids, prompt_mask, response_ids, action_mask = (x.to(device) for x in trim(
            rollout.prompt_ids[micro], rollout.prompt_mask[micro],
            rollout.response_ids[micro], rollout.action_mask[micro]))
        # log pi_theta at the sampling temperature: the rollout recorded log softmax(z / T)
        logp = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask,
                                 dtype=PRECISIONS[cfg.precision], compile=cfg.compile, lean=cfg.lean,
                                 temperature=cfg.sampling.temperature, images=_rows(rollout, micro),
                                 processor=processor)   # [b, T]
        if weight == 0.0:   # padding: the FSDP passes the other ranks run, a zero gradient
            (logp.sum() * 0.0).backward()
            continue
        logp_old = rollout.logp[micro][:, :response_ids.shape[1]].to(device)               # [b, T]
        loss, metrics = opmd_loss(logp, logp_old, advantages[micro].to(device), action_mask,
                                  cfg.tau, level=cfg.logratio_level, aggregation=cfg.aggregation,
                                  normaliser=normaliser)
        if not torch.isfinite(loss):
            finite = False
            if not runtime.is_distributed():   # under FSDP every rank runs all its backwards
                break
        loss.backward()
        loss_sum += float(loss.detach())
        for key, value in metrics.items():   # micro-batch means, weighted by its sequences
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * len(micro)
        rows += len(micro)
    if not runtime.all_true(finite):
        return {"loss": float("nan"), "skipped": 1.0}
    return {"loss": runtime.all_reduce_sum(loss_sum), **{k: v / max(rows, 1) for k, v in metric_sums.items()}}


def _rows(rollout: Rollout, index: torch.Tensor) -> list[tuple[ImageRef, ...]] | None:
    """The images of rows `index` (None for a text rollout)."""
    return None if rollout.images is None else [rollout.images[i] for i in index.tolist()]


def by_length(index: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """`index` [n] reordered by response then prompt length (stable), so that consecutive
    micro-batches are trimmed to similar widths. The loss is a sum over sequences with one
    global normaliser, so the order changes neither the loss nor the gradient.

    >>> r = Rollout(torch.ones(3, 2), torch.tensor([[1, 1], [0, 1], [1, 1]]), torch.zeros(3, 3),
    ...             torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1]]), torch.zeros(3, 3), [""] * 3)
    >>> by_length(torch.tensor([2, 1, 0]), r).tolist()
    [1, 2, 0]
    """
    P = rollout.prompt_mask.shape[1]
    key = rollout.action_mask[index].sum(-1) * (P + 1) + rollout.prompt_mask[index].sum(-1)   # [n]
    return index[torch.sort(key, stable=True).indices]


STOP_REASONS = ("normal", "budget", "repeat", "max_tokens")   # rollout/hf.py


def rollout_metrics(sampled: Rollout, carried: int, seconds: float) -> dict[str, float]:
    """This iteration's sampled segments: stop-reason fractions, tokens/s, groups carried over."""
    stops = sampled.stop_reason
    return {**{f"stop/{r}": stops.count(r) / max(len(stops), 1) for r in STOP_REASONS},
            "partial/carried_groups": float(carried),
            "throughput/generated_tokens_per_s": float(sampled.lengths.sum()) / max(seconds, 1e-9)}


def response_metrics(rollout: Rollout, rewards: torch.Tensor, correct: torch.Tensor,
                     problems: list[Problem]) -> dict[str, Any]:
    """The trained (whole) responses, problems [B] one per row: reward, accuracy, lengths."""
    lengths = rollout.lengths.float()
    segments = partial.segment_counts(rollout)   # [B]: segments each response was sampled in
    p10, p50, p90 = torch.quantile(lengths, torch.tensor([0.1, 0.5, 0.9], device="cpu")).tolist()
    return {
        "reward/mean": float(rewards.mean()),
        "accuracy/train": float(correct.float().mean()),
        **{f"accuracy/train_d{d}": a for d, a in by_difficulty(problems, correct.float()).items()},
        "response_tokens/mean": float(lengths.mean()),
        "response_tokens/p10": p10, "response_tokens/p50": p50, "response_tokens/p90": p90,
        "response_tokens/max": float(lengths.max()),
        "response_tokens/histogram": lengths,              # [B]: TensorBoard histogram only
        "partial/segments_mean": float(segments.float().mean()),
        "partial/continued_frac": float((segments > 1).float().mean()),   # cut, then continued
    }


def run(cfg: RLConfig, make_engine: EngineFactory | None = None, score: Scorer | None = None) -> dict[str, Any]:
    """`make_engine(model, tokenizer)` and `score` replace the in-process rollout engine and
    verifier (stages/rl_ray.py passes Ray actors); by default HFEngine (split across torchrun
    ranks). The engine is closed when the loop ends."""
    with StageRun(cfg) as frame:
        problems = load_problems(cfg.data)
        held_out = load_problems(cfg.eval_data) if cfg.eval_data else []
        if cfg.resume:
            check_resume_step(latest_checkpoint(frame.path), cfg.iterations, "iterations")
        device = runtime.resolve_device(cfg.device)
        cfg = cfg.model_copy(update={"precision": runtime.compute_precision(cfg.precision, device)})
        model_source = str(latest_checkpoint(frame.path) / "model") if cfg.resume else cfg.model
        model, tokenizer = load_model(model_source, prompts=cfg)
        check_images(cfg, problems + held_out, model)
        if cfg.freeze_vision:
            freeze_vision_tower(model)
        loop = Loop.for_model(model, tokenizer, cfg.optim, frame.dir, log_every=1, device=device,
                              precision=cfg.precision, checkpoint_every=cfg.checkpoint_every,
                              keep_checkpoints=cfg.keep_checkpoints)
        loop.save_optimizer, loop.synced = not cfg.reset_optimizer, True   # body() syncs every iteration
        sampler = make_sampler(cfg.sampler, problems, cfg.seed)
        buffer = ReplayBuffer()   # partial rollouts carried between iterations
        start_iteration = 0
        if cfg.resume:
            state = loop.resume()
            sampler.load_state_dict(state["sampler"])
            buffer.load_state_dict(state.get("partial", {"groups": []}))
            start_iteration = state["step"]
        frame.begin()
        engine = make_engine(model, tokenizer) if make_engine else rollout_engine(cfg, model, tokenizer, model_source)
        frame.note_forward("update", forward_path(loop.trainee, cfg.lean))
        frame.note_forward("eval", forward_path(model, cfg.eval.sampling.lean))
        try:
            summary = train(loop, engine, sampler, buffer, problems, held_out, cfg, start_iteration, score)
        finally:
            engine.close()
        frame.note_forward("rollout", getattr(engine, "forward_path", type(engine).__name__))
        summary["model"] = frame.save_model(model, tokenizer)
        if runtime.is_main():
            plot_curves(frame.dir.metrics_path, PLOTTED, frame.path / "curves.png", title="openk1 rl")
        return frame.finish(summary)


def train(loop: Loop, engine: RolloutEngine, sampler: Sampler, buffer: ReplayBuffer, problems: list[Problem],
          held_out: list[Problem], cfg: RLConfig, start_iteration: int,
          score: Scorer | None = None) -> dict[str, Any]:
    """The iteration loop: rollout -> reward -> update -> (eval, checkpoint), driven by `loop`.

    `loop.trainee` takes the optimizer steps; under torchrun it is the FSDP2 copy and
    `loop.model`, which rolls out, evaluates and is saved, gets its weights after each update.
    """
    model, tokenizer = loop.model, loop.tokenizer
    last_eval: dict[str, Any] = {}
    if held_out and cfg.eval_at_start and start_iteration == 0 and runtime.is_main():
        last_eval = _evaluate(model, tokenizer, held_out, cfg)
        loop.run_dir.log(0, _eval_metrics(last_eval))

    def body(iteration: int) -> dict[str, Any]:
        if cfg.reset_optimizer:
            loop.optimizer = make_optimizer(loop.trainee, cfg.optim)
        metrics = _iteration(loop, engine, sampler, buffer, problems, cfg, iteration, score)
        fsdp.sync_weights(loop.trainee, model)   # no-op in one process
        if cfg.engine == "vllm":   # in-process vLLM holds its own weights: push theta_{i+1}
            metrics.update(push_weights(engine, model))
        return metrics

    def after(iteration: int, metrics: dict[str, Any]) -> bool:
        step = iteration + 1
        if held_out and runtime.is_main() and (step % cfg.eval_every == 0 or step == cfg.iterations):
            last_eval.clear()
            last_eval.update(_evaluate(model, tokenizer, held_out, cfg))
            metrics.update(_eval_metrics(last_eval))
        return False

    def postfix(metrics: dict[str, Any]) -> dict[str, Any]:
        return {"reward": f"{metrics.get('reward/mean', float('nan')):.3f}",
                "acc": f"{last_eval.get('accuracy', float('nan')):.3f}",
                "tok_s": f"{metrics['throughput/generated_tokens_per_s']:.0f}"}

    loop.drive(start_iteration, cfg.iterations, body, after=after, postfix=postfix, desc="rl", unit="iter",
               state=lambda: {"sampler": sampler.state_dict(), "partial": buffer.state_dict()})
    kept = ("accuracy", "mean_tokens", "accuracy_by_difficulty")
    return {"iterations": cfg.iterations, **{k: v for k, v in last_eval.items() if k in kept}}


def _iteration(loop: Loop, engine: RolloutEngine, sampler: Sampler, buffer: ReplayBuffer,
               problems: list[Problem], cfg: RLConfig, iteration: int,
               score: Scorer | None = None) -> dict[str, Any]:
    k = cfg.samples_per_prompt
    indices = sampler.sample(iteration, cfg.prompts_per_iter)
    sampling = sampler_metrics(sampler, iteration)
    t0 = time.perf_counter()
    turns = Turns(loop, engine, cfg)
    turns.rollout()
    finished, sampled = rollout_phase(engine, buffer, problems, indices, cfg, iteration)
    memory = turns.update()
    t1 = time.perf_counter()
    metrics = {"iteration": iteration + 1, **sampling, **rollout_metrics(sampled, len(buffer.groups), t1 - t0),
               **memory}
    if not finished:   # every group still has a response to continue: nothing to train on
        return metrics | {"time/rollout": t1 - t0}
    batch = [problems[g.problem] for g in finished]
    rollout = partial.to_rollout(finished, engine.tokenizer)              # whole responses
    rewards, correct, reward_metrics = rewards_for(rollout, batch, k, iteration, cfg, score)
    group_ids = torch.arange(len(batch), device="cpu").repeat_interleave(k)
    advantages, adv_metrics = compute_advantages(rewards, group_ids, cfg.tau, cfg.baseline)
    sampler.update([g.problem for g in finished], correct.float().view(len(batch), k).mean(-1).tolist())
    t2 = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed * 7_919 + iteration)
    trained = partial.loss_view(rollout, cfg.partial.old_segments, engine.tokenizer.pad_token_id)
    exact = getattr(engine, "exact_logp", True)   # vLLM: its own forward's, recomputed here (as verl)
    gap: dict[str, float] = {}
    if cfg.partial.old_logp == "current" or not exact:
        trained, gap = current_logp(loop.trainee, trained, iteration, cfg, every_token=not exact,
                                    processor=processor_of(loop.tokenizer))
    update_metrics = update(loop, trained, advantages, cfg, generator) | turns.after_update() | gap
    seconds = {"rollout": t1 - t0, "reward": t2 - t1, "update": time.perf_counter() - t2}
    return {**metrics, **response_metrics(rollout, rewards, correct, [p for p in batch for _ in range(k)]),
            **{f"time/{name}": v for name, v in seconds.items()}, **reward_metrics,
            **{name: float(v) for name, v in adv_metrics.items()}, **update_metrics}


def current_logp(model: Any, rollout: Rollout, iteration: int, cfg: RLConfig,
                 every_token: bool = False, processor: Any = None) -> tuple[Rollout, dict[str, float]]:
    """`rollout` with the log pi_theta_i of its carried tokens (versions < iteration), or of
    `every_token` (an engine whose log-probs are not the trainer's forward's, e.g. vLLM's bf16
    kernels), recomputed under `model` (= theta_i: no step taken yet this iteration); the other
    tokens keep the log-probs the rollout recorded (rollout/partial.py `old_logp`). Metrics:
    `logp/recomputed_gap_abs`, the mean |recorded - recomputed| over the recomputed tokens."""
    if every_token:
        carried = rollout.action_mask.bool()                             # [B, T]
    elif rollout.versions is None:
        return rollout, {}
    else:
        carried = (rollout.versions >= 0) & (rollout.versions < iteration)   # [B, T]
    rows = carried.any(-1).nonzero().flatten()                          # [R]
    if len(rows) == 0:
        return rollout, {}
    device = next(model.parameters()).device
    logp = rollout.logp.clone()
    for chunk in rows.split(cfg.micro_batch_size or len(rows)):   # the update's memory bound
        prompt_ids, prompt_mask, response_ids, action_mask = (x.to(device) for x in trim(
            rollout.prompt_ids[chunk], rollout.prompt_mask[chunk],
            rollout.response_ids[chunk], rollout.action_mask[chunk]))
        with torch.no_grad():
            recomputed = response_logprobs(model, prompt_ids, prompt_mask, response_ids, action_mask,
                                           dtype=PRECISIONS[cfg.precision], lean=cfg.lean,
                                           temperature=cfg.sampling.temperature, images=_rows(rollout, chunk),
                                           processor=processor).float().cpu()   # [c, t]
        width = recomputed.shape[1]
        logp[chunk, :width] = torch.where(carried[chunk, :width], recomputed, logp[chunk, :width])
    gap = float((logp - rollout.logp).abs()[carried].mean())
    return dataclasses.replace(rollout, logp=logp), {"logp/recomputed_gap_abs": gap}


def rollout_engine(cfg: RLConfig, model: Any, tokenizer: Any, model_source: str) -> RolloutEngine:
    """The in-process engine `engine` names, split across torchrun ranks: HF over the trainer's
    own model, or vLLM loading `model_source` on this rank's GPU (weights pushed each iteration)."""
    if cfg.engine == "vllm":
        from openk1.rollout.vllm_engine import VLLMEngine

        return ShardedEngine(VLLMEngine(model_source, cfg.sampling, cfg.vllm,
                                        PromptSettings(cfg.prompt_format, cfg.system_prompt)))
    return ShardedEngine(HFEngine(model, tokenizer, cfg.sampling, PRECISIONS[cfg.precision], cfg.rollout_compile))


def push_weights(engine: RolloutEngine, model: Any) -> dict[str, float]:
    """The policy's full weights to an engine that holds its own copy; `time/weight_sync` and
    `weight_sync/gb`."""
    t0 = time.perf_counter()
    state = model.state_dict()
    engine.load_weights(state)
    size = sum(t.numel() * t.element_size() for t in state.values())
    return {"time/weight_sync": time.perf_counter() - t0, "weight_sync/gb": size / 2**30}


class Turns:
    """Colocated mode (`colocate`, report §2.6.3): who holds the device in each phase
    (distributed/colocate.py); without it only the memory of each phase is measured."""

    def __init__(self, loop: Loop, engine: RolloutEngine, cfg: RLConfig) -> None:
        own_weights = cfg.engine == "vllm"   # the trainer's weights are not the engine's: they can leave too
        self.params = list(loop.trainee.parameters())
        self.state = TrainState(loop.optimizer, self.params if own_weights else ())
        self.engine, self.colocate, self.optimizer = engine, cfg.colocate, loop.optimizer
        self.device = next(loop.trainee.parameters()).device

    def rollout(self) -> None:
        """Before the rollout: the trainer's state off the device, the engine awake."""
        start_phase(self.device)
        if self.colocate:
            self.state.offload()
            self.engine.wake_up()

    def update(self) -> dict[str, float]:
        """After the rollout: its memory; the engine asleep, the trainer's state back."""
        memory = phase_memory(self.device, self.optimizer, self.params)
        if self.colocate:
            self.engine.sleep()
            self.state.reload()
        return {f"memory/rollout_{k}": v for k, v in memory.items()}

    def after_update(self) -> dict[str, float]:
        return {f"memory/update_{k}": v for k, v in phase_memory(self.device, self.optimizer, self.params).items()}


def rollout_phase(engine: RolloutEngine, buffer: ReplayBuffer, problems: list[Problem], indices: list[int],
                  cfg: RLConfig, iteration: int) -> tuple[list[Group], Rollout]:
    """Start k responses to each new problem, add a segment to every unfinished one; returns
    the groups now complete (the others stay in `buffer`) and this iteration's segments."""
    images = [problems[i].images for i in indices]
    if any(images):   # each <image> expanded for its image (models/vlm.py)
        prompt_ids = [prompt_tokens(engine.tokenizer, problems[i].prompt, problems[i].images) for i in indices]
    else:
        prompt_ids = tokenize(engine.tokenizer, [problems[i].prompt for i in indices])
    fresh = partial.new_groups(indices, prompt_ids, cfg.samples_per_prompt, seed=cfg.seed * 1_000_003 + iteration,
                               images=images)
    groups = buffer.groups + fresh
    sampled = partial.advance(engine, groups, iteration, cfg.partial)
    finished, buffer.groups = partial.ready(groups, cfg.partial.min_finished_groups)
    return finished, sampled


def check_images(cfg: RLConfig, problems: list[Problem], model: Any) -> None:
    """Problems with images need a vision-language model (either engine: vLLM takes them as
    `multi_modal_data`, rollout/vllm_engine.py)."""
    if not any(p.images for p in problems):
        return
    if not is_vlm(model):
        raise OpenK1Error(f"rl: problems with images need a vision-language model; {cfg.model} is text only "
                          "(make one with `openk1 init-model --set vision=true`)")


def _evaluate(model: Any, tokenizer: Any, held_out: list[Problem], cfg: RLConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = evaluate(model, tokenizer, held_out, cfg.eval, rewards=cfg.rewards)
    return result | {"seconds": time.perf_counter() - t0}


def _eval_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's figures as metric keys (`eval/accuracy`, `eval/accuracy_d<difficulty>`)."""
    return {"eval/accuracy": result["accuracy"], "eval/mean_tokens": result["mean_tokens"],
            "time/eval": result["seconds"],
            **{f"eval/accuracy_d{d}": a for d, a in result["accuracy_by_difficulty"].items()}}
