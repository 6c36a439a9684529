"""A missing optional package is named in one line before any work: the key that needs it and how to install it.

A package is made missing here by ``sys.modules[name] = None`` (what ``importlib.util.find_spec`` reports as not
installed), so the tests do not depend on what this machine happens to have."""

from __future__ import annotations

import sys

import pytest

from agentflan.cli import main
from agentflan.config import load_config
from agentflan.preflight import PreflightError, check_optional_packages, require_module


@pytest.mark.parametrize(
    ("command", "override", "module", "message"),
    [
        ("train", "train.model.lora.enabled=true", "peft",
         "train.model.lora.enabled=true needs the peft package, which is not installed: pip install 'agentflan[lora]'"),
        ("run", "train.loss=liger", "liger_kernel",
         "train.loss=liger needs the liger_kernel package, which is not installed: pip install 'agentflan[liger]'"),
        ("train", "train.model.attn_implementation=flash_attention_2", "flash_attn",
         "train.model.attn_implementation=flash_attention_2 needs the flash_attn package"),
        ("tune", "train.model.attn_implementation=flash_attention_3", "flash_attn_interface",
         "train.model.attn_implementation=flash_attention_3 needs the flash_attn_interface package"),
        ("data", "data.negatives.responder={kind: vllm, model: /tmp}", "vllm",
         "data.negatives.responder.kind=vllm needs the vllm package, which is not installed: pip install vllm"),
        ("eval", "eval.general.tasks=[agentflan_gsm8k]", "lm_eval",
         "eval.general.tasks needs the lm_eval package, which is not installed: pip install 'lm-eval>=0.4.13,<0.5' (a base dependency: pip install -e . brings it)"),
    ],
)  # fmt: skip
def test_a_missing_optional_package_is_named_before_any_work(
    monkeypatch, tmp_path, capsys, command, override, module, message
):
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "out"
    args = [command, "pipelines/local.yaml", f"output_dir={out}", override]
    if command == "tune":
        args.insert(2, "tune_spaces/ablation_negatives.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # refused before Ray, the lock or the log


def test_installed_optional_packages_pass(monkeypatch, tmp_path):
    """The same keys with their packages present (stand-in module objects) are not refused."""
    cfg = load_config(
        "pipelines/local.yaml",
        [f"output_dir={tmp_path}", "train.model.lora.enabled=true", "train.loss=liger",
         "train.model.attn_implementation=flash_attention_2", "data.negatives.responder={kind: vllm, model: /tmp}"],
    )  # fmt: skip
    import types

    for name in ("peft", "liger_kernel", "flash_attn", "vllm"):
        module = types.ModuleType(name)
        module.__spec__ = types.SimpleNamespace(name=name)  # find_spec reads the spec of an imported module
        monkeypatch.setitem(sys.modules, name, module)
    check_optional_packages(cfg, "run")


def test_the_default_config_needs_no_optional_package(monkeypatch, tmp_path):
    for name in ("peft", "liger_kernel", "flash_attn", "flash_attn_interface", "vllm", "bfcl_eval"):
        monkeypatch.setitem(sys.modules, name, None)
    check_optional_packages(load_config("pipelines/local.yaml", [f"output_dir={tmp_path}"]), "run")


def test_bfcl_multi_turn_rollouts_name_bfcl_eval(monkeypatch):
    """bfcl-eval is installed without its dependencies: the hint is that exact line, before any work."""
    from agentflan.config import load_config
    from agentflan.preflight import check_optional_packages

    monkeypatch.setitem(sys.modules, "bfcl_eval", None)
    cfg = load_config(None, ["rollout.envs=[bfcl_multi_turn]"])
    with pytest.raises(PreflightError) as e:
        check_optional_packages(cfg, "rollout")
    assert str(e.value) == (
        "rollout.envs=[bfcl_multi_turn] needs the bfcl_eval package, which is not installed: "
        "pip install --no-deps bfcl-eval==2026.3.23 mpmath"
    )
    check_optional_packages(load_config(None, ["rollout.envs=[agentbench_db]"]), "rollout")  # nothing needed
    require_module("json", "any.key")  # present: nothing raised
