"""Device placement: every tensor openk1 creates names its device, the stages run with the
default device set to one that is not the model's, and `device:` resolves or refuses cleanly.

A CPU can only check placement this way: with `torch.set_default_device("meta")` around the
stages (the model loaded on the CPU), a tensor created without a device lands on meta and the
first operation that mixes it with the model's fails. What stays for a GPU (bookkeeping on the
CPU meeting the model's tensors on CUDA) is checked by scripts/gpu_check.sh.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from openk1.cli import main
from openk1.data.io import write_jsonl
from openk1.distributed import runtime
from openk1.errors import OpenK1Error
from openk1.models import io as model_io
from openk1.rewards import reward_model

SRC = Path(__file__).resolve().parents[1] / "src" / "openk1"
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "randperm",
             "eye", "linspace", "as_tensor"}


def implicit_device_calls(tree: ast.AST) -> list[int]:
    """Lines of `torch.<factory>(...)` calls without a `device=` argument."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in FACTORIES and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch" and not any(k.arg == "device" for k in node.keywords)]


def test_every_tensor_openk1_creates_names_its_device() -> None:
    found = [f"{path.relative_to(SRC.parent)}:{line}" for path in sorted(SRC.rglob("*.py"))
             for line in implicit_device_calls(ast.parse(path.read_text()))]
    assert not found, "torch factory calls without device= (CPU bookkeeping says device='cpu'):\n" + "\n".join(found)
    # the rule sees what it should
    assert implicit_device_calls(ast.parse("torch.zeros(3)\ntorch.zeros(3, device=x.device)")) == [1]


@pytest.fixture()
def meta_default(monkeypatch):
    """The default device is meta while a stage runs; models still load on the CPU."""
    def on_cpu(real):
        class OnCPU:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                with torch.device("cpu"):
                    return real.from_pretrained(*args, **kwargs)
        return OnCPU

    monkeypatch.setattr(model_io, "AutoModelForCausalLM", on_cpu(model_io.AutoModelForCausalLM))
    monkeypatch.setattr(reward_model, "AutoModelForSequenceClassification",
                        on_cpu(reward_model.AutoModelForSequenceClassification))
    torch.set_default_device("meta")
    assert torch.zeros(1).device.type == "meta"          # a stray allocation really goes to meta
    yield
    torch.set_default_device(None)


def test_stages_create_no_tensor_on_the_default_device(tmp_path, tiny_model_dir, meta_default) -> None:
    problems = tmp_path / "p.jsonl"
    write_jsonl(problems, [{"prompt": f"{a}+{b}=", "answer": str(a + b), "type": "math"}
                           for a in range(1, 6) for b in range(1, 4)])
    write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"{a}+1=", "response": f"\\boxed{{{a + 1}}}"} for a in range(9)])
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)}
                                       for a in range(6)])
    write_jsonl(tmp_path / "r.jsonl", [{"prompt": f"{a}+1=", "answer": str(a + 1), "response": str(a + 1 + a % 2),
                                        "label": 1 - a % 2} for a in range(12)])
    model, held = str(tiny_model_dir), ["eval.max_problems=2", "eval.sampling.max_new_tokens=4"]
    runs = {
        "sft": ["--data", tmp_path / "s.jsonl", "--set", "max_steps=2", "batch_size=4", f"eval_data={problems}", *held],
        "rl": ["--data", problems, "--set", "iterations=1", "prompts_per_iter=2", "samples_per_prompt=2",
               "sampling.max_new_tokens=4", f"eval_data={problems}", *held],
        "eval": ["--data", problems, "--set", *held],
        "dpo": ["--data", tmp_path / "d.jsonl", "--set", "max_steps=2", "batch_size=3", f"eval_data={problems}", *held],
        "curate": ["--data", problems, "--set", "difficulty.samples_per_prompt=2",
                   "difficulty.sampling.max_new_tokens=4", "hack.attempts=2", "hack.sampling.max_new_tokens=4"],
    }
    for command, args in runs.items():
        assert main([command, "--model", model, "--out", str(tmp_path / command), *map(str, args)]) == 0, command
    assert main(["rm", "train", "--model", model, "--data", str(tmp_path / "r.jsonl"), "--out",
                 str(tmp_path / "rm"), "--set", "epochs=1", "batch_size=4", "max_tokens=32"]) == 0
    assert json.loads((tmp_path / "rl" / "summary.json").read_text())["iterations"] == 1


def test_device_keys_resolve_or_refuse(monkeypatch) -> None:
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(OpenK1Error, match=rf"^device: {asked} asked for, but CUDA is not available .*set "
                                              r"device: cpu or auto$"):
            runtime.resolve_device(asked)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("auto") == torch.device("cuda", 0)       # LOCAL_RANK 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.resolve_device("cuda") == torch.device("cuda", 1)       # torchrun: this rank's GPU
    with pytest.raises(OpenK1Error, match="device: cuda:2, but only 2 GPUs are visible"):
        runtime.resolve_device("cuda:2")
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert runtime.compute_precision("auto", cuda) == "bf16" and runtime.compute_precision("auto", cpu) == "fp32"
    assert runtime.compute_precision("fp32", cuda) == "fp32"


def test_a_device_the_config_cannot_name_is_refused(tmp_path, tiny_model_dir, capsys) -> None:
    assert main(["eval", "--model", str(tiny_model_dir), "--data", "x.jsonl", "--out", str(tmp_path / "e"),
                 "--set", "device=gpu"]) == 2
    assert "device" in capsys.readouterr().err
