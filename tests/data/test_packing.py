"""Packing: hand-computed layouts, and packed examples that cannot see each other."""

import pytest
import torch

from openk1.data.packing import Example, block_causal_mask, collate, encode_row, fit_length, pack


def ex(n: int, first: int = 10) -> Example:
    return Example(list(range(first, first + n)), [0] + [1] * (n - 1))


def test_fit_length_rules():
    e = ex(7)                                                   # ids 10..16
    assert fit_length(e, 8, "drop") == ([e], "ok")
    assert fit_length(e, 3, "drop") == ([], "dropped")
    kept, status = fit_length(e, 3, "truncate")
    assert status == "truncated" and kept[0].ids == [10, 11, 12] and kept[0].action_mask == [0, 1, 1]
    chunks, status = fit_length(e, 3, "split")                  # 3 + 3 + 1 -> the 1-token tail is useless
    assert status == "split"
    assert [c.ids for c in chunks] == [[10, 11, 12], [13, 14, 15]]
    assert [c.action_mask for c in chunks] == [[0, 1, 1], [0, 1, 1]]


def test_pack_next_fit():
    rows = pack([ex(n) for n in (3, 2, 4, 1, 5, 2)], 5)
    assert [[len(e.ids) for e in r] for r in rows] == [[3, 2], [4, 1], [5], [2]]
    with pytest.raises(Exception, match="max_len"):
        pack([ex(6)], 5)


def test_collate_positions_segments_masks():
    a = Example([1, 2, 3], [0, 1, 1])
    b = Example([4, 5], [1, 1])                 # a first token is never trained: mask forced to 0
    c = Example([6, 7, 8, 9], [0, 0, 1, 1])
    batch = collate([[a, b], [c]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
    assert batch["action_mask"].tolist() == [[0, 1, 1, 0, 1], [0, 0, 1, 1, 0]]


def test_block_causal_mask_by_hand():
    seg = torch.tensor([[1, 1, 2, 0]])
    allowed = [[1, 0, 0, 0],
               [1, 1, 0, 0],
               [0, 0, 1, 0],
               [0, 0, 0, 1]]
    assert block_causal_mask(seg, "bool")[0, 0].int().tolist() == allowed
    fmask = block_causal_mask(seg, "float")[0, 0]
    assert fmask.shape == (4, 4) and (fmask == 0).int().tolist() == allowed
    assert float(fmask[0, 1]) == torch.finfo(torch.float32).min


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_alone(tiny, impl):
    from openk1.trainer import batch_nll

    model, tokenizer = tiny
    model.config._attn_implementation = impl
    kind = "float" if impl == "eager" else "bool"
    examples = [encode_row({"text": t}, tokenizer) for t in ("12+34=46", "7+8=15 ok", "999")]
    batch = collate([examples], tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=block_causal_mask(batch["segment_ids"], kind),
                       position_ids=batch["position_ids"]).logits[0]
        start = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e.ids])).logits[0]
            assert torch.allclose(packed[start:start + len(e.ids)], alone, atol=1e-5, rtol=0)
            start += len(e.ids)
        # the packed loss is the sum of the alone losses
        total, n = batch_nll(model, [examples], tokenizer.pad_token_id, torch.device("cpu"))
        alone_sum = sum(float(batch_nll(model, [[e]], tokenizer.pad_token_id, torch.device("cpu"))[0])
                        for e in examples)
    assert n == sum(len(e.ids) - 1 for e in examples)
    assert abs(float(total) - alone_sum) < 1e-4


def test_encode_rows(tiny):
    _, tok = tiny
    bos, eos = tok.bos_token_id, tok.eos_token_id
    t = encode_row({"text": "ab"}, tok)
    assert t.ids == [bos, *tok("ab", add_special_tokens=False)["input_ids"], eos] and t.action_mask == [0, 1, 1, 1]
    pr = encode_row({"prompt": "1+1=", "response": "2"}, tok)
    assert pr.action_mask == [0, 0, 0, 0, 0, 1, 1] and pr.ids[-1] == eos and not pr.cut   # bos + 4 prompt chars
    cut = encode_row({"prompt": "1=", "response": "123"}, tok, max_response_tokens=2)
    assert cut.cut and cut.action_mask == [0, 0, 0, 1, 1] and fit_length(cut, 0, "drop")[1] == "truncated"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    plain = encode_row({"messages": msgs}, tok)                 # no chat template: user text is context
    assert plain.action_mask == [0, 0, 0, 1, 1, 1] and plain.ids[-1] == eos


def test_encode_messages_with_chat_template(tiny):
    _, tok = tiny
    tok.chat_template = ("{% for m in messages %}<{{ m.role[0] }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    e = encode_row({"messages": msgs}, tok)
    text = tok.decode(e.ids)
    assert text == "<u>hi<a>yo"
    trained = tok.decode([i for i, m in zip(e.ids, e.action_mask) if m])
    assert trained == "yo"                       # the "<a>" header is context, not trained
