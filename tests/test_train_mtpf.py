"""train_mtpf.py end to end, as a user runs it (subprocess), single process and torchrun with 2 processes."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from mtpf.args import parse_args
from mtpf.release import load_release, validate_release
from tests.conftest import REPO_ROOT, run_command, smoke_argv


def test_smoke_config_runs_end_to_end_and_exports_a_release(tmp_path, pseudo_label_cache):
    argv = smoke_argv(tmp_path / "run", pseudo_label_cache, "--max_steps", "4", "--resume_from_checkpoint", "last")
    run_command([sys.executable, str(REPO_ROOT / "train_mtpf.py"), *argv], cwd=tmp_path)
    release = tmp_path / "run" / "release"
    assert validate_release(release) == ["ner", "tc"]
    config = json.loads((release / "backbone" / "config.json").read_text())
    assert config["pretraining"]["mode"] == "mtpf_tpl" and config["pretraining"]["steps"] == 4
    assert config["task_slots"]["ner"]["trained"] and config["task_slots"]["tc"]["trained"]
    assert list((tmp_path / "run" / "runs").rglob("events.out.tfevents*")) == []  # smoke reports to none
    peft_model, tokenizer = load_release(release)
    batch = tokenizer(["A man is playing the cello."], return_tensors="pt")
    outputs = {}
    with torch.no_grad():
        for task in ("ner", "tc"):
            peft_model.set_adapter(task)
            outputs[task] = peft_model(**batch).pooler_output
    assert not torch.allclose(outputs["ner"], outputs["tc"])  # both slots were trained

    # resuming a finished run continues from its last checkpoint and does no more steps
    again = run_command([sys.executable, str(REPO_ROOT / "train_mtpf.py"), *argv], cwd=tmp_path)
    assert f"Resuming from checkpoint {tmp_path / 'run' / 'checkpoint-4'}" in again.stderr


def test_slotless_mode_exports_identity_slots(tmp_path, pseudo_label_cache):
    from mtpf.args import parse_args as parse
    from train_mtpf import build_trainer, export

    model_args, data_args, args = parse(
        smoke_argv(tmp_path, pseudo_label_cache, "--mode", "pf_tc", "--max_steps", "2", "--save_strategy", "no")
    )
    trainer = build_trainer(model_args, data_args, args)
    trainer.train()
    release = export(trainer, data_args)
    config = json.loads((release / "backbone" / "config.json").read_text())
    assert not config["task_slots"]["tc"]["trained"] and config["pretraining"]["tasks"] == ["tc"]
    peft_model, tokenizer = load_release(release)
    batch = tokenizer(["A man is playing the cello."], return_tensors="pt")
    with torch.no_grad():
        with_slot = peft_model(**batch).pooler_output
        with peft_model.disable_adapter():
            without = peft_model(**batch).pooler_output
    torch.testing.assert_close(with_slot, without)  # identity (B = 0) slots


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is installed with torch")
def test_torchrun_two_processes(tmp_path, pseudo_label_cache):
    argv = smoke_argv(tmp_path / "ddp", pseudo_label_cache, "--max_steps", "3", "--tc_mini_batch_size", "8")
    run_command(["torchrun", "--nproc_per_node", "2", str(REPO_ROOT / "train_mtpf.py"), *argv], cwd=tmp_path)
    assert validate_release(tmp_path / "ddp" / "release") == ["ner", "tc"]
    state = json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="mode='mtpf_tp'"):
        parse_args(smoke_argv(tmp_path, tmp_path, "--mode", "mtpf_tp"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: config file not found"):
        parse_args([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_configs_parse(name):
    no_gpu = ["--bf16", "false"] if name == "paper" else []  # the paper's recipe asks for bf16 on a GPU
    model_args, data_args, args = parse_args([str(REPO_ROOT / "configs" / f"{name}.yaml"), *no_gpu])
    assert model_args.mode == "mtpf_tpl" and data_args.pairs and args.max_steps > 0
