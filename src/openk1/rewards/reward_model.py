"""Classic reward model (report §2.3.5): a sequence classifier that reads
(question, reference answer, response) and outputs P(the response is correct).

The report's classic value-head model reached 84.4% spot-check accuracy on math; for free-form
answers it is "a reward model that predicts whether y matches y*". Here it is any Hugging Face
causal LM loaded with `AutoModelForSequenceClassification` (`num_labels=2`: a fresh linear
`score` head on the last real token; for Llama that is `LlamaForSequenceClassification`).
Label 1 = correct, so P(correct) = softmax(logits)[:, 1].

Input template (`RM_TEMPLATE`), one string per example:

    Question: {prompt}
    Reference answer: {answer}
    Response: {response}
    Is the response correct?

Text only: a vision-language model and problems with images are refused (`TEXT_ONLY`); a
chain-of-thought judge (`openk1 rm train --set kind=cot`) can be a VLM.

Over `max_tokens`, the reference and the last line stay whole, the response keeps its end
(where the final answer is) and the question its beginning; the response gets at least half of
what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from openk1.errors import OpenK1Error
from openk1.models.forward import eval_mode
from openk1.padding import pad
from openk1.rewards.base import Score
from openk1.types import Problem

RM_QUESTION = "Question: {prompt}"
RM_REFERENCE = "\nReference answer: {answer}\nResponse: "
RM_TAIL = "\nIs the response correct?"
RM_TEMPLATE = RM_QUESTION + RM_REFERENCE + "{response}" + RM_TAIL
NUM_LABELS = 2  # 0 = wrong, 1 = correct
# why a vision-language model and rows with images are refused, and what to do instead
TEXT_ONLY = ("the classic reward model reads text only (a sequence classifier on a text causal LM; "
             "transformers has none for LLaVA): train a chain-of-thought judge on a vision-language "
             "model instead (`openk1 rm train --set kind=cot`)")


def load_reward_model(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, Any]:
    """(sequence classifier, tokenizer) from a causal-LM or reward-model directory.

    A causal LM gets a fresh 2-way head; a directory saved by `openk1 rm train` reloads its head.
    `config.pad_token_id` is set (to EOS when the tokenizer has no pad token): the classifier
    finds each row's last real token through it.
    """
    from openk1.models.vision import is_vision

    path = Path(path)
    if not (path / "config.json").is_file():
        raise OpenK1Error(f"{path}: not a model directory (no config.json)")
    if is_vision(path):
        raise OpenK1Error(f"{path}: a vision-language model; {TEXT_ONLY}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=NUM_LABELS, dtype=dtype, pad_token_id=tokenizer.pad_token_id
        )
    except (OSError, ValueError) as exc:
        raise OpenK1Error(f"{path}: cannot load a sequence classifier ({exc})") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode_rm_inputs(
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    responses: Sequence[str],
    max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Right-padded input ids [B, L] and attention mask [B, L] (L <= max_tokens) of RM_TEMPLATE.

    >>> from openk1.models.tiny import char_tokenizer
    >>> tok = char_tokenizer()
    >>> ids, mask = encode_rm_inputs(tok, ["1+1?" * 9], ["2"], ["x" * 99 + "2"], 80)
    >>> ids.shape, int(mask.sum())
    (torch.Size([1, 80]), 80)
    >>> tok.decode(ids[0], skip_special_tokens=True).splitlines()
    ['Question: 1', 'Reference answer: 2', 'Response: xxxxxxxxxxx2', 'Is the response correct?']
    """
    rows = [
        _encode_one(tokenizer, p, a, r, max_tokens)
        for p, a, r in zip(prompts, answers, responses, strict=True)
    ]
    return pad(rows, tokenizer.pad_token_id)


def _encode_one(
    tokenizer: Any, prompt: str, answer: str, response: str, max_tokens: int
) -> list[int]:
    """Token ids of one example. Over `max_tokens`, the reference and the closing question are
    kept whole; the response keeps its end and the question its beginning, the response getting
    at least half of the room left."""
    question = tokenizer(RM_QUESTION.format(prompt=prompt), add_special_tokens=True)["input_ids"]
    middle = tokenizer(RM_REFERENCE.format(answer=answer), add_special_tokens=False)["input_ids"]
    body = tokenizer(response, add_special_tokens=False)["input_ids"]
    tail = tokenizer(RM_TAIL, add_special_tokens=False)["input_ids"]
    room = max(0, max_tokens - len(middle) - len(tail))
    keep_body = min(len(body), max(room // 2, room - len(question)))
    question = question[: room - keep_body]
    body = body[len(body) - keep_body :]
    ids: list[int] = (question + middle + body + tail)[-max_tokens:]
    return ids


@torch.no_grad()
def correct_probability(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    responses: Sequence[str],
    max_tokens: int,
    batch_size: int,
) -> torch.Tensor:
    """P(correct) [B] for B (prompt, reference, response) triples, in batches of `batch_size`."""
    parts = []
    with eval_mode(model):
        for s in range(0, len(prompts), batch_size):
            ids, mask = encode_rm_inputs(
                tokenizer,
                prompts[s : s + batch_size],
                answers[s : s + batch_size],
                responses[s : s + batch_size],
                max_tokens,
            )
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            parts.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu())  # [b]
    return torch.cat(parts) if parts else torch.zeros(0, device="cpu")


class RewardModelVerifier:
    """`(response, problem) -> Score` from a trained reward model; the model loads once, on
    first use, and stays cached on the instance. `score_batch` scores many rows in one pass
    (what `score_many` calls).

    reward = 1.0 if P(correct) >= threshold else 0.0 (`soft=True`: reward = P(correct));
    verdict "rm_correct" / "rm_wrong"; details {"probability": P(correct)}.

    >>> rm = RewardModelVerifier("runs/rm/model", threshold=0.5)        # doctest: +SKIP
    >>> rm("so the answer is 42", Problem("6*7?", "42", "freeform"))    # doctest: +SKIP
    Score(reward=1.0, verdict='rm_correct', details={'probability': 0.97})
    """

    def __init__(
        self,
        model_dir: str | Path,
        threshold: float = 0.5,
        soft: bool = False,
        max_tokens: int = 1024,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        self.model_dir, self.threshold, self.soft = str(model_dir), threshold, soft
        self.max_tokens, self.batch_size, self.device = max_tokens, batch_size, device
        self._loaded: tuple[Any, Any] | None = None

    def model(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded on the first call only."""
        if self._loaded is None:
            model: Any
            model, tokenizer = load_reward_model(self.model_dir)
            self._loaded = (model.to(self.device).eval(), tokenizer)
        return self._loaded

    def __call__(self, response: str, problem: Problem) -> Score:
        return self.score_batch([response], [problem])[0]

    def score_batch(self, responses: Sequence[str], problems: Sequence[Problem]) -> list[Score]:
        if any(p.images for p in problems):
            raise OpenK1Error(f"reward_model: a problem with images; {TEXT_ONLY}")
        model, tokenizer = self.model()
        probs = correct_probability(
            model,
            tokenizer,
            [p.prompt for p in problems],
            [p.answer for p in problems],
            responses,
            self.max_tokens,
            self.batch_size,
        ).tolist()
        return [self._score(p) for p in probs]

    def _score(self, prob: float) -> Score:
        ok = prob >= self.threshold
        reward = prob if self.soft else float(ok)
        return Score(reward, "rm_correct" if ok else "rm_wrong", {"probability": prob})
