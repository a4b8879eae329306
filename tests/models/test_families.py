"""Any Hugging Face causal LM through every stage: tiny random Llama, Qwen2, Qwen3, Mistral (with
and without a sliding window), Gemma, Gemma 2 (alternating sliding / full layers, eager
attention), Phi-3 and GPT-2 models sharing one byte-level BPE tokenizer with a ChatML template
(tests/models/families.py).

  - the rollout engine's continuous batching (rows finishing at different times, refills
    joined) records the log-probs a fresh forward pass gives, on contexts longer than the
    sliding window; the lean and HF decoders sample the same tokens; the forward path is named;
  - generation stops on a generation_config EOS id that is not the tokenizer's EOS;
  - sft -> eval -> rl through the CLI for every family; pretrain, longcot, curate, dpo,
    long2short, merge and rm (classic, cot) for Qwen2 and Gemma 2;
  - the chat prompt format is recorded with an SFT'd model, RL samples chat prompts, and an SFT
    row's last trained token is the end of turn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import IM_END, IM_START, KINDS, LEAN, bpe_tokenizer, tiny_model

from openk1 import trainer
from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.data.packing import encode_row
from openk1.errors import OpenK1Error
from openk1.models.forward import response_logprobs
from openk1.models.io import load_model
from openk1.models.prompting import PromptSettings, record_eos_ids, stop_ids, turn_end_id
from openk1.rollout import hf
from openk1.rollout.engine import Request, requests_for
from openk1.rollout.hf import HFEngine, SamplingConfig
from openk1.stages import long2short

SLIDING = ("mistral_sw", "gemma2")
WINDOW = 8
# 7 prompts of 20-46 chat-templated tokens (> 2 x WINDOW): the window cuts every response's context
PROMPTS = ["1+1=", "what is 17*23?", "compute the sum of 12 and 7 and 5", "3*4=",
           "show your work: 28+29=", "the answer is", "check 9*9 and 81"]
K = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> a saved tiny model folder (random init, seed 0), built once for the module."""
    root = tmp_path_factory.mktemp("families")
    tokenizer = bpe_tokenizer(root / "tokenizer")
    return {kind: _saved(kind, tokenizer, root / kind) for kind in KINDS}


def _saved(kind: str, tokenizer, folder: Path) -> Path:
    tiny_model(kind, tokenizer, folder)
    return folder


def sharp(folder: Path):
    """The folder's model and tokenizer with every parameter redrawn at std 0.5: log-probs
    spread over several nats (std 1.2-1.7 over the sampled tokens; random init's std 0.02 gives
    a near-uniform model, on which a wrong attention mask would hardly show)."""
    model, tokenizer = load_model(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval(), tokenizer


def staggered(tokenizer) -> list[Request]:
    """7 prompts x 2 samples with budgets of 3 to 11 tokens, every third continuing a 4-token
    prefix (a partial rollout): rows leave the batch at different steps and the waiting ones are
    prefilled and joined to rows already decoding."""
    requests = requests_for(tokenizer, PROMPTS, K, seed=3)
    prefix = tuple(tokenizer("so the answer", add_special_tokens=False)["input_ids"][:4])
    assert len(prefix) == 4
    return [Request(r.prompt_ids, r.stream, prefix=prefix if i % 3 == 0 else (), budget=3 + (5 * i) % 9)
            for i, r in enumerate(requests)]


MAX_NEW = 12


def sampling(lean: bool) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, batch_size=3, continuous_batching=True, lean=lean)


# fp32 on 2 layers of width 32: the rollout's incremental (KV-cached, row-joined) forward and the
# fresh full forward differ only in summation order. The sampled tokens' log-probs lie in
# [-9.3, 0] (ulp <= 9.5e-7); measured differences are <= 5.7e-6 (6 ulps: Phi-3; Gemma 4.8e-6,
# the others <= 3.8e-6; lean vs HF decoding <= 3.4e-6). 2e-5 absolute per token is ~20 ulps,
# 3.5x the largest measured (room for other CPUs' kernels), and 5 orders of magnitude below
# what a wrong mask does (ignoring the sliding window moves log-probs by 2.5-6.4 nats: checked).
TOL = 2e-5


@pytest.mark.parametrize("kind", list(KINDS))
@torch.no_grad()
def test_rollout_logprobs_equal_a_fresh_forward(kind, folders, monkeypatch):
    """Continuous batching (3 slots, 14 requests of staggered budgets, some continuing a prefix)
    records the log-probs of a fresh forward over the same tokens, and the lean decoder samples
    the HF decoder's tokens."""
    model, tokenizer = sharp(folders[kind])
    prefills = []
    extend = hf.HFCacheState.extend

    def counting_extend(self, contexts, pad_id):
        prefills.append(len(contexts))
        return extend(self, contexts, pad_id)

    monkeypatch.setattr(hf.HFCacheState, "extend", counting_extend)
    engine = HFEngine(model, tokenizer, sampling(lean=False))
    assert engine.forward_path == "hf (lean: false)"
    requests = staggered(tokenizer)
    rollout = engine.sample(requests)
    assert engine.forward_path == "hf (lean: false)"        # no whole-batch fallback: rows were joined
    assert sum(prefills) == len(requests) and len(prefills) > 3 and max(prefills) <= 3
    for n, stop, request in zip(rollout.lengths.tolist(), rollout.stop_reason, requests):
        limit = min(MAX_NEW - len(request.prefix), request.budget)
        assert (n == limit and stop in ("budget", "max_tokens")) or (n < limit and stop == "normal")
    assert int(rollout.prompt_mask.sum(-1).min()) > 2 * WINDOW
    fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                              rollout.action_mask, lean=False)
    mask = rollout.action_mask.bool()
    assert float(rollout.logp[mask].std()) > 1.0             # a sharp model: log-probs spread out
    assert float((fresh - rollout.logp)[mask].abs().max()) < TOL
    if kind in SLIDING:   # the window matters at these lengths: without it the log-probs differ
        model.config.sliding_window = 10_000
        unwindowed = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                       rollout.action_mask, lean=False)
        model.config.sliding_window = WINDOW
        assert float((unwindowed - rollout.logp)[mask].abs().max()) > 100 * TOL

    lean_engine = HFEngine(model, tokenizer, sampling(lean=True))
    if kind in LEAN:
        assert lean_engine.forward_path == "lean"
        lean_rollout = lean_engine.sample(requests)
        assert torch.equal(lean_rollout.response_ids, rollout.response_ids)
        assert float((lean_rollout.logp - rollout.logp)[mask].abs().max()) < TOL
        lean_fresh = response_logprobs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                                       rollout.action_mask, lean=True)
        assert float((lean_fresh - rollout.logp)[mask].abs().max()) < TOL
    else:
        reason = "sliding-window attention" if kind == "mistral_sw" else f"model_type '{kind}' is not one of"
        assert lean_engine.forward_path.startswith(f"hf ({reason}")


# ------------------------------------------------------------------ stopping


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
@torch.no_grad()
def test_a_generation_config_eos_id_ends_a_response(kind, folders):
    """In the plain format the turn end is EOS, so <|im_end|> stops a response only because the
    model's generation_config lists it (as instruct checkpoints list their end of turn)."""
    model, tokenizer = load_model(folders[kind], prompts=PromptSettings(prompt_format="plain"))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert im_end != tokenizer.eos_token_id and turn_end_id(tokenizer) == tokenizer.eos_token_id
    assert im_end in stop_ids(tokenizer)
    calls = []

    def im_end_from_the_fourth_pass(module, args, logits):   # prefill, 2 steps, then <|im_end|>
        calls.append(1)
        if len(calls) >= 4:
            logits = logits.clone()
            logits[..., im_end] += 1e4
        return logits

    model.lm_head.register_forward_hook(im_end_from_the_fourth_pass)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8, lean=False)
    rollout = HFEngine(model, tokenizer, greedy).generate(["1+1="], 1, seed=0)
    tokens = rollout.response_ids[0, :int(rollout.lengths[0])].tolist()
    assert len(tokens) == 4 and tokens[-1] == im_end and im_end not in tokens[:-1]
    assert rollout.stop_reason == ["normal"] and IM_END not in rollout.texts[0]
    # the same model without <|im_end|> in its generation_config writes it and goes on to the limit
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    record_eos_ids(tokenizer, model)
    calls.clear()
    rollout = HFEngine(model, tokenizer, greedy).generate(["1+1="], 1, seed=0)
    assert rollout.stop_reason == ["max_tokens"] and rollout.response_ids[0, 3:8].tolist() == [im_end] * 5


# ------------------------------------------------------------------ packed training rows


@pytest.mark.parametrize("kind", [*KINDS, "gemma:eager"])
@torch.no_grad()
def test_packed_examples_score_as_if_alone(kind, folders):
    """The LM trainer's packed rows (trainer.py packed_mask: a block-causal mask, bool for SDPA
    and float for eager attention, or per-layer masks HF builds from restarting position ids for
    sliding-window models): each example's NLL equals that of the example alone in its row,
    with examples longer than the window."""
    kind, _, attention = kind.partition(":")
    model, tokenizer = sharp(folders[kind])
    if attention:
        model.set_attn_implementation(attention)
        assert trainer.packed_mask(model, torch.ones(1, 2, dtype=torch.long)).dtype == torch.float32
    examples = [encode_row({"prompt": p, "response": "so the answer is \\boxed{12}"}, tokenizer)
                for p in PROMPTS[:3]]
    assert min(len(e.ids) for e in examples) > 2 * WINDOW
    pad, cpu = tokenizer.pad_token_id, torch.device("cpu")
    packed, tokens = trainer.batch_nll(model, [examples, examples[1:]], pad, cpu)
    alone = sum(float(trainer.batch_nll(model, [[e]], pad, cpu)[0]) for e in [*examples, *examples[1:]])
    # the NLL summed over ~105 trained tokens (700-1330 nats): measured <= 1.1e-7 relative (1 fp32
    # eps, summation order); 1e-6 is 8 eps
    assert tokens > 100 and float(packed) == pytest.approx(alone, rel=1e-6)
    if kind in SLIDING:   # the window is applied in packed rows: without it the NLL moves by > 20 nats
        model.config.sliding_window = 10_000
        assert abs(float(trainer.batch_nll(model, [examples, examples[1:]], pad, cpu)[0]) - alone) > 20


# ------------------------------------------------------------------ every stage through the CLI


def cli(*args) -> None:
    assert main([str(a) for a in args]) == 0, args


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    sums = [(12, 7), (3, 4), (28, 29), (9, 9)]
    write_jsonl(root / "problems.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math"}
                                          for a, b in sums[:3]])
    write_jsonl(root / "sft.jsonl", [{"prompt": f"{a}+{b}=", "response": f"so \\boxed{{{a + b}}}"} for a, b in sums])
    write_jsonl(root / "fit.jsonl", [{"prompt": "1+1=", "response": "\\boxed{2}"}])
    write_jsonl(root / "one.jsonl", [{"prompt": "1+1=", "answer": "2", "type": "math"}])
    write_jsonl(root / "text.jsonl", [{"text": f"{a}+{b}={a + b} so the answer is {a + b}"} for a in range(6)
                                      for b in range(3)])
    write_jsonl(root / "pairs.jsonl", [{"prompt": f"{a}+{b}=", "chosen": f"\\boxed{{{a + b}}}",
                                        "rejected": f"{a}+{b} check ok \\boxed{{{a + b + 1}}}"} for a, b in sums])
    write_jsonl(root / "labelled.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b), "response": f"\\boxed{{{c}}}",
                                           "label": int(c == a + b)} for a, b in sums for c in (a + b, a + b + 1)])
    curate = [{"id": f"s{i}", "prompt": f"{a}+{b}=", "answer": str(a + b), "domain": "arithmetic",
               "short_response": f"\\boxed{{{a + b}}}"} for i, (a, b) in enumerate(sums[:3])]
    write_jsonl(root / "curate.jsonl", curate + [{"id": "dup", "prompt": "12 + 7 =", "answer": "19"},
                                                 {"id": "untagged", "prompt": "what is 17*23?", "answer": "391"}])
    return root


def expected_rollout_path(kind: str) -> str:
    if kind in LEAN:
        return "lean"
    return "hf (sliding-window attention)" if kind == "mistral_sw" else (
        f"hf (model_type '{kind.removesuffix('_sw')}' is not one of ('llama', 'qwen2', 'qwen3', 'mistral'))")


def expected_update_path(kind: str) -> str:
    sliding = "hf (packed rows; per-layer masks from position ids: sliding-window layers)"
    return sliding if kind in SLIDING else "hf (packed rows; block-causal mask)"


@pytest.mark.parametrize("kind", list(KINDS))
def test_sft_eval_rl(kind, folders, data, tmp_path, monkeypatch):
    """sft -> eval -> rl on every family; the chat format travels with the SFT'd model: its
    prompts start with <|im_start|> in SFT and in RL, and SFT trains <|im_end|> last."""
    _, tokenizer = load_model(folders[kind])
    im_start, im_end = (tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END))
    packed, prompts = [], []
    collate, sample = trainer.collate, HFEngine.sample
    monkeypatch.setattr(trainer, "collate", lambda rows, pad_id: packed.extend(rows) or collate(rows, pad_id))
    monkeypatch.setattr(HFEngine, "sample", lambda self, requests: prompts.extend(requests) or sample(self, requests))

    cli("sft", "--model", folders[kind], "--data", data / "sft.jsonl", "--out", tmp_path / "sft", "--set", "epochs=1",
        "max_steps=2", "batch_size=2", "optim.lr=1e-3", "optim.lr_min=1e-4", "optim.warmup_steps=0")
    assert summary_of(tmp_path / "sft")["forward"] == {"update": expected_update_path(kind)}
    assert json.loads((tmp_path / "sft" / "model" / "openk1_prompting.json").read_text()) == {"format": "chat",
                                                                                              "system": ""}
    assert len(packed) == 4                                  # 2 steps x 2 rows, one example each
    for example in (e for row in packed for e in row):
        last = max(i for i, m in enumerate(example.action_mask) if m)
        assert example.ids[0] == im_start and example.ids[last] == im_end and last == len(example.ids) - 1

    cli("eval", "--model", tmp_path / "sft", "--data", data / "problems.jsonl", "--out", tmp_path / "eval", "--set",
        "eval.samples_per_prompt=1", "eval.sampling.max_new_tokens=8")
    evaluated = summary_of(tmp_path / "eval")
    assert evaluated["forward"] == {"eval": expected_rollout_path(kind)} and evaluated["samples"] == 3

    prompts.clear()
    cli("rl", "--model", tmp_path / "sft", "--data", data / "problems.jsonl", "--out", tmp_path / "rl", "--set",
        "iterations=1", "prompts_per_iter=2", "samples_per_prompt=2", "sampling.max_new_tokens=8",
        "eval_at_start=false", "minibatches_per_iter=1", "epochs_per_iter=1", "optim.lr=1e-4")
    rl = summary_of(tmp_path / "rl")
    assert rl["forward"]["rollout"] == rl["forward"]["eval"] == expected_rollout_path(kind)
    assert rl["forward"]["update"] == ("lean" if kind in LEAN else expected_rollout_path(kind))
    assert len(prompts) == 4 and all(r.prompt_ids[0] == im_start for r in prompts)
    assert (tmp_path / "rl" / "model" / "openk1_prompting.json").is_file()


def test_a_recorded_plain_format_wins_over_the_chat_template(folders, data, tmp_path, monkeypatch):
    """`prompt_format: auto` means the format the model was trained on: a model SFT'd in plain
    text is sampled in plain text by RL although its tokenizer has a chat template."""
    prompts = []
    sample = HFEngine.sample
    monkeypatch.setattr(HFEngine, "sample", lambda self, requests: prompts.extend(requests) or sample(self, requests))
    cli("sft", "--model", folders["gemma2"], "--data", data / "sft.jsonl", "--out", tmp_path / "sft", "--set",
        "prompt_format=plain", "epochs=1", "max_steps=1", "batch_size=2", "optim.lr=1e-3", "optim.lr_min=1e-4")
    assert json.loads((tmp_path / "sft" / "model" / "openk1_prompting.json").read_text())["format"] == "plain"
    cli("rl", "--model", tmp_path / "sft", "--data", data / "problems.jsonl", "--out", tmp_path / "rl", "--set",
        "iterations=1", "prompts_per_iter=2", "samples_per_prompt=2", "sampling.max_new_tokens=8",
        "eval_at_start=false", "minibatches_per_iter=1", "epochs_per_iter=1")
    _, tokenizer = load_model(folders["gemma2"])
    plain = {tuple(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in ("12+7=", "3+4=", "28+29=")}
    assert len(prompts) == 4 and all(r.prompt_ids in plain for r in prompts)


@pytest.fixture(scope="module")
def trained(folders, data, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(kind, "long"): qwen2 and gemma2 SFT'd to answer "1+1=" with "\\boxed{2}", a generator
    whose greedy traces verify (longcot build keeps verified traces only); (kind, "short"): 2
    SFT steps on sft.jsonl, a model of the same lineage to merge with."""
    root = tmp_path_factory.mktemp("trained")
    for kind in ("qwen2", "gemma2"):
        cli("sft", "--model", folders[kind], "--data", data / "fit.jsonl", "--out", root / kind / "long", "--set",
            "epochs=60", "batch_size=1", "optim.lr=0.01", "optim.lr_min=0.001", "optim.warmup_steps=0",
            "log_every=100")
        cli("sft", "--model", folders[kind], "--data", data / "sft.jsonl", "--out", root / kind / "short", "--set",
            "epochs=1", "max_steps=2", "batch_size=2", "optim.lr=1e-3", "optim.lr_min=1e-4", "optim.warmup_steps=0")
    return {(kind, which): root / kind / which / "model" for kind in ("qwen2", "gemma2") for which in ("long", "short")}


def rm_common():
    return ("epochs=1", "batch_size=4", "heldout_fraction=0.25", "max_new_tokens=8", "optim.lr=1e-3",
            "optim.lr_min=1e-4", "optim.warmup_steps=0")


STAGES = ["pretrain", "longcot", "curate", "dpo", "long2short", "merge", "rm_classic", "rm_cot"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("kind", ["qwen2", "gemma2"])
def test_more_stages(kind, stage, folders, trained, data, tmp_path, monkeypatch):
    model, out = folders[kind], tmp_path / stage
    long, short = trained[kind, "long"], trained[kind, "short"]
    if stage == "pretrain":   # packed rows of 32 tokens: several examples per row
        cli("pretrain", "--model", model, "--data", data / "text.jsonl", "--out", out, "--set", "batch_size=2",
            "stages=[{name: base, max_seq_len: 32, max_steps: 2, rope_theta: 20000}]")
        assert summary_of(out)["forward"] == {"update": expected_update_path(kind)}
        pretrained, _ = load_model(out)
        assert pretrained.config.rope_parameters["rope_theta"] == 20000
    elif stage == "longcot":
        cli("longcot", "build", "--model", long, "--data", data / "one.jsonl", "--out", out, "--set",
            'build.template="{prompt}"', "build.samples_per_prompt=2", "build.sampling.temperature=0",
            "build.sampling.max_new_tokens=8")
        rows = [json.loads(x) for x in (out / "longcot.jsonl").read_text().splitlines()]
        assert [r["response"] for r in rows] == ["\\boxed{2}"]
        cli("longcot", "train", "--model", long, "--out", out, "--set", "epochs=1", "batch_size=1")
        assert summary_of(out)["steps"] == 1 and (out / "sft" / "model" / "config.json").is_file()
    elif stage == "curate":
        cli("curate", "--data", data / "curate.jsonl", "--model", model, "--out", out, "--set",
            'hack.template="{prompt}"', "hack.sampling.max_new_tokens=6", "difficulty.sampling.max_new_tokens=6",
            "difficulty.samples_per_prompt=2", "tagging.method=model", "progress=false")
        summary = summary_of(out)
        assert summary["model_filters"] is True and summary["removed"]["duplicate"] == 1
        kept = [json.loads(x) for x in (out / "curated.jsonl").read_text().splitlines()]
        domains = ("math", "physics", "chemistry", "biology", "code", "general")   # a random model's pick
        assert len(kept) == 4 and kept[-1]["id"] == "untagged" and kept[-1]["domain"] in domains
    elif stage == "dpo":
        cli("dpo", "--model", model, "--data", data / "pairs.jsonl", "--out", out, "--set", "epochs=0",
            "max_steps=2", "batch_size=2", "beta=0.5", "optim.lr=1e-3", "optim.lr_min=1e-4")
        assert summary_of(out)["forward"]["update"] == expected_rollout_path(kind)
    elif stage == "long2short":
        real = long2short.draw_samples

        def draw(cfg, root, model_dir="", round_=1):   # the model's own samples, then a correct short
            problems, groups = real(cfg, root, model_dir, round_)   # one, a long one and a wrong one
            extra = [[(f"\\boxed{{{p.answer}}}", 5, True), (f"{p.prompt}{p.answer} so \\boxed{{{p.answer}}}", 12, True),
                      ("so the answer is \\boxed{0}", 9, False)] for p in problems]
            return problems, [g + e for g, e in zip(groups, extra)]

        monkeypatch.setattr(long2short, "draw_samples", draw)
        values = {"model": str(long), "data": str(data / "problems.jsonl"),
                  "eval_data": str(data / "one.jsonl"), "out": str(out),
                  "eval": {"samples_per_prompt": 1, "sampling": {"max_new_tokens": 6}},
                  "samples": {"samples_per_prompt": 2, "sampling": {"max_new_tokens": 6}},
                  "merge": {"short_model": str(short), "weights": [0.7, 0.3]},
                  "shortest_rs": {"epochs": 1, "batch_size": 2}, "dpo": {"epochs": 1, "batch_size": 4},
                  "rl": {"iterations": 1, "prompts_per_iter": 2, "samples_per_prompt": 2,
                         "sampling": {"max_new_tokens": 6}, "eval_at_start": False}}
        (tmp_path / "l2s.yaml").write_text(json.dumps(values))
        cli("long2short", "--config", tmp_path / "l2s.yaml")
        summary = summary_of(out)
        assert [s["name"] for s in summary["stages"]] == ["l2s_merge", "l2s_shortest_rs", "l2s_dpo", "l2s_rl"]
    elif stage == "merge":
        cli("merge", "--out", out, "--set", f"models=[{long}, {short}]", "weights=[0.5, 0.5]")
        merged, _ = load_model(out / "model")
        assert merged.config.model_type == kind
    else:
        kind_set = "kind=" + stage.removeprefix("rm_")
        cli("rm", "train", "--model", model, "--data", data / "labelled.jsonl", "--out", out, "--set", kind_set,
            *rm_common())
        summary = summary_of(out)
        assert summary["kind"] == stage.removeprefix("rm_") and (out / "model" / "config.json").is_file()
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()


def test_merge_a_checkpoint_without_a_pad_token_with_its_sft(folders, trained, tmp_path):
    base, tuned = folders["gemma2"], trained["gemma2", "short"]
    assert load_model(base)[1].pad_token_id == load_model(tuned)[1].pad_token_id   # as openk1 loads them
    cli("merge", "--out", tmp_path / "merged", "--set", f"models=[{base}, {tuned}]", "weights=[0.5, 0.5]")



# GPT-2 has learned absolute positions (n_positions 256 here) and no rotary embedding


def test_rope_theta_on_a_model_without_rope_is_a_one_line_error(folders, data, tmp_path):
    assert main(["pretrain", "--model", str(folders["gpt2"]), "--data", str(data / "text.jsonl"), "--out",
                 str(tmp_path / "run"), "--set", "batch_size=2",
                 "stages=[{name: base, max_seq_len: 32, max_steps: 1, rope_theta: 20000}]"]) == 2


def test_examples_longer_than_learned_positions_are_a_one_line_error(folders, tmp_path):
    write_jsonl(tmp_path / "long.jsonl", [{"text": " ".join(f"7+{b}={7 + b}" for b in range(90))}])   # ~500 tokens
    assert main(["pretrain", "--model", str(folders["gpt2"]), "--data", str(tmp_path / "long.jsonl"), "--out",
                 str(tmp_path / "run"), "--set", "batch_size=1",
                 "stages=[{name: long, max_seq_len: 512, max_steps: 1}]"]) == 2


@torch.no_grad()
def test_sampling_up_to_learned_positions_ends_cleanly(folders):
    model, tokenizer = load_model(folders["gpt2"])
    stops = stop_ids(tokenizer)

    def never_stop(module, args, logits):
        logits = logits.clone()
        logits[..., stops] = -1e4
        return logits

    model.lm_head.register_forward_hook(never_stop)
    limit = model.config.n_positions                                    # 256
    engine = HFEngine(model, tokenizer, SamplingConfig(temperature=0.0, max_new_tokens=limit, lean=False))
    try:
        rollout = engine.generate(["1+1="], 1, seed=0)
    except OpenK1Error:
        return                                                          # refused up front: fine
    assert rollout.stop_reason == ["max_tokens"]
    assert int(rollout.prompt_mask.sum()) + int(rollout.lengths[0]) <= limit
