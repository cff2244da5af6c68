"""train_mtpf.py end to end, as a user runs it (subprocess), single process and torchrun with 2 processes."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from mtpf.release import load_release, validate_release
from mtpf.training.args import parse_args
from tests.conftest import REPO_ROOT, run_command, smoke_argv, train_smoke_release


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
    release = train_smoke_release(
        tmp_path, pseudo_label_cache, "--mode", "pf_tc", "--max_steps", "2", "--save_strategy", "no"
    )
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
def test_torchrun_two_processes(tmp_path, pseudo_label_cache, dropout_free_encoder_dir):
    """2 processes x 8 pairs (negatives gathered across ranks, GradCache on) train the same weights as 1 process
    x 16 pairs without caching: the contrastive step is exact under data parallelism."""
    common = ("--mode", "pf_tc", "--backbone", str(dropout_free_encoder_dir), "--max_steps", "3")
    argv = smoke_argv(tmp_path / "ddp", pseudo_label_cache, *common, "--tc_mini_batch_size", "8")
    run_command(["torchrun", "--nproc_per_node", "2", str(REPO_ROOT / "train_mtpf.py"), *argv], cwd=tmp_path)
    single = smoke_argv(tmp_path / "single", pseudo_label_cache, *common)
    run_command([sys.executable, str(REPO_ROOT / "train_mtpf.py"), *single], cwd=tmp_path)
    state = json.loads((tmp_path / "ddp" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    weights = {}
    for run in ("ddp", "single"):
        assert validate_release(tmp_path / run / "release") == ["ner", "tc"]
        weights[run] = load_file(str(tmp_path / run / "release" / "backbone" / "model.safetensors"))
    initial = load_file(str(dropout_free_encoder_dir / "model.safetensors"))
    name = "backbone.encoder.layer.1.attention.self.query.weight"
    assert not torch.allclose(weights["single"][name], initial[name.removeprefix("backbone.")])  # it trained
    for name, value in weights["single"].items():
        torch.testing.assert_close(weights["ddp"][name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="mode='mtpf_tp'"):
        parse_args(smoke_argv(tmp_path, tmp_path, "--mode", "mtpf_tp"))
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: config file not found"):
        parse_args([str(tmp_path / "missing.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("mode: mtpf_tpl\npairs: [a, b\n")
    with pytest.raises(ValueError, match=r"(?s)broken\.yaml: not a valid YAML config .*line 2, column 8"):
        parse_args([str(broken)])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--ner_batch_size", "-4", "--ner_batch_size -4: must be at least 1"),
        ("--tc_batch_size", "1", "--tc_batch_size 1: must be at least 2"),
        ("--num_clusters", "0", "--num_clusters 0: must be at least 2"),
        ("--tc_mini_batch_size", "-1", "--tc_mini_batch_size -1: must be 0"),
        ("--tc_length_chunk", "-2", "--tc_length_chunk -2: must be 0"),
        ("--temperature", "0", "--temperature 0.0: must be positive"),
    ],
)
def test_impossible_sizes_are_refused_before_training(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        parse_args(smoke_argv(tmp_path, tmp_path, flag, value))


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_shipped_configs_parse(name):
    no_gpu = ["--bf16", "false"] if name == "paper" else []  # the paper's recipe asks for bf16 on a GPU
    model_args, data_args, args = parse_args([str(REPO_ROOT / "configs" / f"{name}.yaml"), *no_gpu])
    assert model_args.mode == "mtpf_tpl" and data_args.pairs and args.max_steps > 0
