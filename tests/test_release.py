"""Release folders: layout, atomicity, bad input, and loading as a user would (fresh process, remote code)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_mtpf import MtpfModel
from mtpf.release import (
    ReleaseError,
    export_release,
    init_release,
    load_encoder,
    load_release,
    mtpf_model_from_encoder,
    validate_release,
)
from mtpf.slots import activate_slot, attach_slots
from tests.conftest import REPO_ROOT, build_tiny_encoder, randomize_lora, run_command


def run_user_process(args: list[str], tmp_path: Path):
    """A fresh interpreter with an empty remote-code cache, offline, outside the repository."""
    return run_command([sys.executable, *args], tmp_path, HF_MODULES_CACHE=str(tmp_path / "modules-cache"))


def example_texts() -> list[str]:
    spec = importlib.util.spec_from_file_location("load_release_example", REPO_ROOT / "examples" / "load_release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TEXTS


@pytest.fixture(scope="module")
def trained_release(tiny_encoder_dir, tmp_path_factory):
    """A release whose slots hold non-zero weights, plus the in-memory outputs it must reproduce."""
    encoder, tokenizer = load_encoder(str(tiny_encoder_dir))
    peft_model = attach_slots(mtpf_model_from_encoder(encoder, tpl_layers=2, r=4, lora_alpha=8)).eval()
    randomize_lora(peft_model)
    batch = tokenizer(example_texts(), padding=True, return_tensors="pt")
    expected = {}
    with torch.no_grad():
        for task in (None, "ner", "tc"):
            activate_slot(peft_model, task)
            output = peft_model(**batch)
            expected[f"{task or 'base'}.sentence"] = output.pooler_output
            expected[f"{task or 'base'}.tokens"] = output.last_hidden_state
    release = export_release(peft_model, tokenizer, tmp_path_factory.mktemp("release") / "out")
    return release, expected


def test_layout_is_what_goes_to_the_hub(trained_release):
    release, _ = trained_release
    files = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    assert {
        "backbone/config.json",
        "backbone/configuration_mtpf.py",
        "backbone/modeling_mtpf.py",
        "backbone/model.safetensors",
        "adapters/ner/adapter_config.json",
        "adapters/ner/adapter_model.safetensors",
        "adapters/tc/adapter_config.json",
        "adapters/tc/adapter_model.safetensors",
    } <= set(files)
    assert not [f for f in files if ".tmp" in f or "scratch" in f]
    with safe_open(str(release / "backbone" / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and not [k for k in keys if "lora_" in k or "base_layer" in k]
    config = json.loads((release / "backbone" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_mtpf.MtpfForTokenClassification"
    assert config["task_slots"]["ner"]["adapter"] == "../adapters/ner"
    adapter_config = json.loads((release / "adapters" / "tc" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "../../backbone"
    assert adapter_config["r"] == 4 and adapter_config["peft_type"] == "LORA"


def test_user_loads_backbone_and_slots_in_fresh_process(trained_release, tmp_path):
    release, expected = trained_release
    out = tmp_path / "embeddings.safetensors"
    run_user_process([str(REPO_ROOT / "examples" / "load_release.py"), str(release), "--output", str(out)], tmp_path)
    assert any((tmp_path / "modules-cache").rglob("modeling_mtpf.py")), "remote code was not used"
    got = load_file(str(out))
    torch.testing.assert_close(got["base"], expected["base.sentence"], atol=1e-5, rtol=0)
    for task in ("ner", "tc"):
        torch.testing.assert_close(got[f"{task}.sentence"], expected[f"{task}.sentence"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[f"{task}.tokens"], expected[f"{task}.tokens"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[f"{task}.sentence.from_config"], expected[f"{task}.sentence"], atol=1e-5, rtol=0)
    assert not torch.allclose(got["ner.sentence"], got["tc.sentence"])


def test_token_classification_pipeline_runs_from_release(trained_release, tmp_path):
    release, _ = trained_release
    result = run_user_process([str(REPO_ROOT / "examples" / "ner_pipeline.py"), str(release)], tmp_path)
    assert "'entity':" in result.stdout


def test_package_loader_matches_in_memory(trained_release):
    release, _ = trained_release
    peft_model, _ = load_release(release)
    assert set(peft_model.peft_config) == {"ner", "tc"}
    assert validate_release(release) == ["ner", "tc"]


def test_init_release_equals_original_encoder(tiny_encoder_dir, tiny_tokenizer, tmp_path):
    release = init_release(str(tiny_encoder_dir), tmp_path / "rel", tpl_layers=1, r=2, lora_alpha=4)
    encoder, _ = load_encoder(str(tiny_encoder_dir))
    model = MtpfModel.from_pretrained(str(release / "backbone")).eval()
    batch = tiny_tokenizer(["john moved to paris", "the river"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).last_hidden_state, encoder.eval()(**batch).last_hidden_state, atol=1e-5, rtol=0
        )


def test_rewrite_replaces_old_release_atomically(tiny_encoder_dir, tmp_path):
    target = tmp_path / "rel"
    init_release(str(tiny_encoder_dir), target, tasks=["ner"], tpl_layers=1, r=2, lora_alpha=4)
    init_release(str(tiny_encoder_dir), target, tasks=["tc"], tpl_layers=1, r=2, lora_alpha=4)
    assert sorted(p.name for p in (target / "adapters").iterdir()) == ["tc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_failed_export_leaves_nothing_behind(tiny_encoder_dir, tmp_path):
    with pytest.raises(ValueError):
        init_release(str(tiny_encoder_dir), tmp_path / "rel", tpl_layers=9)
    assert list(tmp_path.iterdir()) == []


def test_adapter_from_other_backbone_is_rejected(trained_release, tmp_path):
    release, _ = trained_release
    other_encoder = build_tiny_encoder(tmp_path / "wide", hidden_size=48, num_hidden_layers=4, intermediate_size=96)
    other = init_release(str(other_encoder), tmp_path / "other", tpl_layers=1, r=2, lora_alpha=4)
    model = MtpfModel.from_pretrained(str(release / "backbone"))
    with pytest.raises(ValueError, match=r"adapters/ner/adapter_model\.safetensors.*layer\.3"):
        model.check_adapter_weights(str(other / "adapters" / "ner"))
    narrow = build_tiny_encoder(tmp_path / "narrow", hidden_size=48)
    narrow_release = init_release(str(narrow), tmp_path / "narrow-rel", tpl_layers=2, r=2, lora_alpha=4)
    model.config.task_slots["ner"]["adapter"] = str(narrow_release / "adapters" / "ner")
    with pytest.raises(ValueError, match=r"has size 48 where module .* needs 32"):
        model.load_task_adapters(["ner"])


def test_missing_and_corrupted_files_are_named(tiny_encoder_dir, tmp_path):
    release = init_release(str(tiny_encoder_dir), tmp_path / "rel", tpl_layers=1, r=2, lora_alpha=4)
    adapter = release / "adapters" / "tc" / "adapter_model.safetensors"
    adapter.write_bytes(b"\x00" * 3)
    with pytest.raises(OSError, match=r"adapters/tc/adapter_model\.safetensors: corrupted"):
        validate_release(release)
    adapter.unlink()
    with pytest.raises(ReleaseError, match=r"adapters/tc/adapter_model\.safetensors: missing"):
        validate_release(release)
    weights = release / "backbone" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ReleaseError, match=r"backbone/model\.safetensors: corrupted"):
        validate_release(release)


def test_init_cli(tiny_encoder_dir, tmp_path):
    run_command(
        [
            sys.executable,
            "-m",
            "mtpf",
            "init",
            "--backbone",
            str(tiny_encoder_dir),
            "--output",
            str(tmp_path / "rel"),
            "--tpl_layers",
            "1",
            "--rank",
            "2",
            "--alpha",
            "4",
            "--tasks",
            "ner",
        ],
        REPO_ROOT,
    )
    assert validate_release(tmp_path / "rel") == ["ner"]


def test_ner_adapter_loads_into_the_token_classification_head(trained_release, recwarn):
    """Same module names in every class: the adapter's keys all match (no 'missing adapter keys')."""
    from peft import PeftModel

    from modeling_mtpf import MtpfForTokenClassification

    release, expected = trained_release
    head_model = MtpfForTokenClassification.from_pretrained(str(release / "backbone"), num_labels=3).eval()
    tagger = PeftModel.from_pretrained(head_model, str(release / "adapters" / "ner")).eval()
    assert not [w for w in recwarn if "missing adapter keys" in str(w.message)]
    _, tokenizer = load_release(release)
    batch = tokenizer(example_texts(), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = tagger(**batch).logits
    torch.testing.assert_close(logits, head_model.classifier(expected["ner.tokens"]), atol=1e-5, rtol=0)


def test_info_counts_parameters(trained_release):
    from mtpf.release import release_summary

    release, _ = trained_release
    summary = release_summary(release)
    model = MtpfModel.from_pretrained(str(release / "backbone"))
    assert summary["backbone_parameters"] == sum(p.numel() for p in model.parameters())
    peft_model, _ = load_release(release)
    for task in ("ner", "tc"):
        expected = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n and f".{task}." in n)
        assert summary["slots"][task]["parameters"] == expected
    result = run_command([sys.executable, "-m", "mtpf", "info", str(release)], REPO_ROOT)
    assert f"slot ner: {summary['slots']['ner']['parameters']:,} parameters" in result.stdout


def test_atomic_writes_get_normal_permissions(tmp_path):
    from mtpf.io import atomic_directory, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "f").write_text("y")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask
