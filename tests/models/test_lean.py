"""models/lean.py: the lean forward equals HF's forward (values and gradients), the static-cache
decoder equals a fresh forward after prefill, steps and compaction, and unsupported models are
refused by name."""

import shutil

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from openk1.models.forward import position_ids
from openk1.models.lean import LeanModel, unsupported_reason

SIZE = dict(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, max_position_embeddings=128)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZE)),                 # q/k/v bias
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SIZE, head_dim=16)),    # q/k RMSNorm
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SIZE, sliding_window=None)),
}


def build(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)    # larger than init: differences would show
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :3] = 0                          # left padding, as the trainer's layout has
    mask[1, :1] = 0
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_gradients_equal_hf(family):
    model = build(family)
    ids, mask = batch()
    reference = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    (reference * mask[..., None]).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lean = LeanModel.of(model)
    logits = lean.logits(ids, mask, position_ids(mask), keep=5)             # the last 5 positions
    assert logits.shape == (3, 5, 50)
    real = mask[:, -5:, None].bool()
    # fp32, logits up to ~1.5 (ulp 1.2e-7): 1e-5 is ~80 ulps (measured <= 3.6e-7 on AMX / AVX2 /
    # default kernels); gradients up to ~125 (squared logits): 1e-4 relative (measured <= 2.3e-5 abs)
    assert torch.allclose(logits * real, reference[:, -5:] * real, atol=1e-5)
    full = lean.logits(ids, mask, position_ids(mask), keep=9)
    (full * mask[..., None]).square().sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-4), name


def test_bf16_compute_is_close_and_keeps_fp32_gradients():
    model = build("llama")
    ids, mask = batch()
    reference = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    lean = LeanModel.of(model, torch.bfloat16)
    logits = lean.logits(ids, mask, position_ids(mask), keep=9)
    assert logits.dtype == torch.bfloat16
    real = mask[..., None].bool()
    scale = reference.abs().max()
    # bf16 (eps 2^-7 = 0.0078) rounds the inputs of every matmul: 0.1 of the largest logit is ~13
    # bf16 eps (measured 0.0064 of it, the same on AMX / AVX2 / default kernels)
    assert ((logits.float() - reference).abs() * real).max() < 0.1 * scale
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoder_prefill_step_and_keep_equal_a_fresh_forward(family):
    model = build(family)
    ids, mask = batch()
    contexts = [ids[i][mask[i].bool()].tolist() for i in range(3)]          # lengths 6, 8, 9
    decoder = LeanModel.of(model).decoder(slots=4, length=12)
    first = decoder.extend(contexts[:2], pad_id=0)                            # two rows, then one more
    second = decoder.extend(contexts[2:], pad_id=0)
    with torch.no_grad():
        fresh = [model(input_ids=torch.tensor([c])).logits[0, -1] for c in contexts]
    for got, want in zip([*first, *second], fresh):   # fp32 logits <= ~1.1: 1e-5 is ~80 ulps
        assert torch.allclose(got, want, atol=1e-5)   # (measured <= 4.8e-7)
    tokens = torch.tensor([[7, 8], [9, 10], [11, 12]])
    decoder.step(tokens[:, 0])
    order = decoder.keep(torch.tensor([False, True, True]))
    assert order.tolist() == [2, 1]          # row 2 moves into the hole at 0; row 1 stays
    assert decoder.lens.tolist() == [10, 9]
    logits = decoder.step(tokens[order, 1])
    for j, row in enumerate(order.tolist()):
        with torch.no_grad():
            want = model(input_ids=torch.tensor([contexts[row] + tokens[row].tolist()])).logits[0, -1]
        assert torch.allclose(logits[j], want, atol=1e-5)


def test_decoder_refuses_more_rows_or_tokens_than_it_holds():
    decoder = LeanModel.of(build("llama")).decoder(slots=2, length=4)
    with pytest.raises(ValueError, match="holds 2 rows x 4 tokens"):
        decoder.extend([[1, 2, 3, 4, 5]], pad_id=0)
    with pytest.raises(ValueError, match="asked for 3 rows"):
        decoder.extend([[1], [2], [3]], pad_id=0)


def test_unsupported_models_are_named():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=16))
    assert "gpt2" in unsupported_reason(gpt2) and LeanModel.of(gpt2) is None
    sliding = MistralForCausalLM(MistralConfig(**SIZE, sliding_window=4))
    assert unsupported_reason(sliding) == "sliding-window attention"
    assert unsupported_reason(build("llama")) is None


def test_bf16_decoder_with_reordered_weights_equals_plain_bf16(monkeypatch):
    """Packing the bf16 weights for oneDNN (CPU) changes the speed, not the logits."""
    from openk1.models import lean as lean_module

    model = build("llama")
    ids, mask = batch()
    contexts = [ids[i][mask[i].bool()].tolist() for i in range(3)]
    tokens = torch.tensor([3, 4, 5])

    def decode():
        decoder = LeanModel.of(model, torch.bfloat16).decoder(slots=3, length=12)
        return decoder, decoder.extend(contexts, pad_id=0), decoder.step(tokens)

    packed, *packed_logits = decode()
    monkeypatch.setattr(lean_module, "_packable", lambda dtype, device: False)
    plain, *plain_logits = decode()
    assert plain.weights[0].packed is None
    if packed.weights[0].packed is not None:   # a CPU build with oneDNN
        for a, b in zip(packed_logits, plain_logits):   # ~1 bf16 eps of logits ~1 (measured: equal)
            assert torch.allclose(a, b, atol=1e-2)
    # bf16 vs fp32: 0.1 of the largest logit is ~13 bf16 eps (measured 0.0058 abs, 0.05 of atol)
    fp32 = LeanModel.of(model).decoder(slots=3, length=12)
    assert torch.allclose(fp32.extend(contexts, pad_id=0), plain_logits[0], atol=0.1 * plain_logits[0].abs().max())


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_layers_equal_eager_in_values_and_gradients():
    """compile: true runs the same layer function through inductor: same logits and gradients
    (fp32, to fused-kernel rounding), over two shapes (dynamic shapes, no wrong reuse)."""
    model = build("llama")
    ids, mask = batch()
    for keep_rows in (3, 2):
        i, m = ids[:keep_rows], mask[:keep_rows]
        eager = LeanModel.of(model).logits(i, m, position_ids(m), keep=9)
        (eager * m[..., None]).square().sum().backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        compiled = LeanModel.of(model, compile=True).logits(i, m, position_ids(m), keep=9)
        (compiled * m[..., None]).square().sum().backward()
        real = m[..., None].bool()
        # inductor fuses and reorders fp32 sums: logits <= ~1.5 within 1e-4 (~800 ulps; measured
        # <= 3.3e-7), gradients <= ~65 within 1e-3 relative (measured <= 1.9e-5 abs)
        assert torch.allclose(compiled * real, eager * real, atol=1e-4)
        for name, p in model.named_parameters():
            assert torch.allclose(p.grad, expected[name], rtol=1e-3, atol=1e-3), name
        model.zero_grad()


def test_recomputed_mlp_gives_the_same_gradients(monkeypatch):
    """Above RECOMPUTE_MLP_BYTES the MLP saves gate/up only (models/fused.py): same gradients."""
    from openk1.models import lean as lean_module

    model = build("llama")
    ids, mask = batch()
    grads = []
    for threshold in (1 << 40, 0):        # never, always
        monkeypatch.setattr(lean_module, "RECOMPUTE_MLP_BYTES", threshold)
        LeanModel.of(model).logits(ids, mask, position_ids(mask), keep=9).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    for a, b in zip(*grads):   # the same ops recomputed: equal (measured), 1e-5 allows fp32 reordering
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
