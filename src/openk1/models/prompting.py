"""How a prompt becomes tokens and how a response ends, the same in every stage.

`prompt_format` (every stage's config, with `system_prompt`):

    auto    the format the model was trained on (recorded in its folder, `openk1_prompting.json`,
            by the stage that saved it), else `chat` when the tokenizer has a chat template,
            else `plain`
    chat    [system?, user: prompt] through the tokenizer's chat template with the generation
            prompt (the assistant header); the template's own special tokens, nothing added
    plain   the prompt text (after `system_prompt` and a blank line, when one is given),
            with the special tokens the tokenizer adds (e.g. BOS)

A response ends with the turn's end token: in `chat`, the first special token the template
writes after an assistant reply (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3,
`<end_of_turn>` for Gemma); in `plain`, EOS. SFT trains it, the rollout stops on it. Generation
stops on every id of `stop_ids`: that end token, the tokenizer's EOS and every id of the model's
`generation_config.eos_token_id` (instruct checkpoints list their end of turn there).

The resolved format is attached to the tokenizer (`configure`), so every place that tokenizes
a prompt (rollout, eval, curation, SFT and DPO rows) reads the same one, and `models/io.py`
saves it with the model: a model SFT'd on one format is sampled in RL, evaluated and shortened
on that format without being told again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from openk1.errors import OpenK1Error

PromptFormat = Literal["auto", "chat", "plain"]
RECORD = "openk1_prompting.json"    # in a saved model's folder
ATTRIBUTE = "openk1_prompting"      # on the tokenizer: the resolved Prompting
RECORDED = "openk1_recorded_prompting"   # on the tokenizer: what its folder recorded
EXTRA_STOPS = "openk1_eos_ids"      # on the tokenizer: generation_config's eos ids


@dataclass(frozen=True)
class PromptSettings:
    """What a stage config says (its `prompt_format` and `system_prompt` keys)."""

    prompt_format: PromptFormat = "auto"
    system_prompt: str = ""


@dataclass(frozen=True)
class Prompting:
    """A resolved prompt format and its system prompt."""

    format: Literal["chat", "plain"]
    system: str = ""


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve(tokenizer: Any, prompt_format: PromptFormat = "auto", system_prompt: str = "") -> Prompting:
    """The format `prompt_format` means for this tokenizer (module doc); `chat` without a
    template is an error naming the fix."""
    recorded: Prompting | None = getattr(tokenizer, RECORDED, None)
    if prompt_format == "auto":
        if recorded is not None:
            return Prompting(recorded.format, system_prompt or recorded.system)
        return Prompting("chat" if has_template(tokenizer) else "plain", system_prompt)
    if prompt_format == "chat" and not has_template(tokenizer):
        raise OpenK1Error("prompt_format: chat, but the tokenizer has no chat template; set "
                          "prompt_format: plain, or add a template (tokenizer.chat_template) to the model folder")
    return Prompting(prompt_format, system_prompt)


def configure(tokenizer: Any, prompt_format: PromptFormat = "auto", system_prompt: str = "") -> Prompting:
    """Resolve and attach the format: every later tokenization of a prompt uses it."""
    chosen = resolve(tokenizer, prompt_format, system_prompt)
    setattr(tokenizer, ATTRIBUTE, chosen)
    return chosen


def prompting(tokenizer: Any) -> Prompting:
    """The tokenizer's attached format, or what `auto` resolves to."""
    attached: Prompting | None = getattr(tokenizer, ATTRIBUTE, None)
    return attached if attached is not None else resolve(tokenizer)


def _ids(out: Any) -> list[int]:
    """Token ids from apply_chat_template (a list, or a BatchEncoding in transformers 5)."""
    return [int(i) for i in (out["input_ids"] if hasattr(out, "keys") else out)]


def messages_for(prompt: str, system: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The tokens a model is given for `prompt` (module doc), ending where its response starts."""
    chosen = prompting(tokenizer)
    if chosen.format == "chat":
        return _ids(tokenizer.apply_chat_template(messages_for(prompt, chosen.system), tokenize=True,
                                                  add_generation_prompt=True))
    text = f"{chosen.system}\n\n{prompt}" if chosen.system else prompt
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def turn_end_id(tokenizer: Any) -> int:
    """The token that ends a response: the chat template's end of an assistant turn (`chat`),
    else EOS. Found by rendering a probe conversation: the first special token after the reply."""
    if prompting(tokenizer).format != "chat":
        return int(tokenizer.eos_token_id)
    probe = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]
    header = _ids(tokenizer.apply_chat_template(probe[:1], tokenize=True, add_generation_prompt=True))
    full = _ids(tokenizer.apply_chat_template(probe, tokenize=True, add_generation_prompt=False))
    special = set(getattr(tokenizer, "all_special_ids", [])) | _added_special_ids(tokenizer)
    after = [t for t in full[len(header):] if t in special]
    return after[0] if after else int(tokenizer.eos_token_id)


def _added_special_ids(tokenizer: Any) -> set[int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {int(i) for i, token in decoder.items() if getattr(token, "special", False)}


def stop_ids(tokenizer: Any) -> list[int]:
    """Every id that ends a response (module doc), sorted."""
    ids = {int(tokenizer.eos_token_id), turn_end_id(tokenizer), *getattr(tokenizer, EXTRA_STOPS, ())}
    return sorted(ids)


def record_eos_ids(tokenizer: Any, model: Any) -> None:
    """Attach the model's generation_config eos ids (an int or a list) to its tokenizer."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    setattr(tokenizer, EXTRA_STOPS, tuple(int(i) for i in ids))


def save_record(tokenizer: Any, folder: Path) -> None:
    """Write the tokenizer's attached format into a saved model folder (nothing if none)."""
    chosen: Prompting | None = getattr(tokenizer, ATTRIBUTE, None)
    if chosen is not None:
        (folder / RECORD).write_text(json.dumps(asdict(chosen)) + "\n")


def load_record(tokenizer: Any, folder: Path) -> None:
    """Attach what a model folder recorded (`auto` then means it)."""
    path = folder / RECORD
    if not path.is_file():
        return
    try:
        values = json.loads(path.read_text())
        recorded = Prompting(values["format"], str(values.get("system", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise OpenK1Error(f"{path}: not a prompt-format record ({exc})") from None
    if recorded.format not in ("chat", "plain"):
        raise OpenK1Error(f"{path}: format must be chat or plain, got {recorded.format!r}")
    setattr(tokenizer, RECORDED, recorded)
