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
from transformers import AutoTokenizer

from configuration_mtpf import MtpfConfig
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
from tests.conftest import REPO_ROOT, build_tiny_encoder, mtpf_command, randomize_lora, run_command


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
        "backbone/modules.json",
        "backbone/sentence_bert_config.json",
        "backbone/1_Pooling/config.json",
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


def test_sentence_transformers_loads_the_backbone_and_the_tc_slot(trained_release, tmp_path):
    """SentenceTransformer(backbone) embeds as the backbone; with active_slot="tc" as mtpf's tc slot, to 1e-5."""
    release, _ = trained_release
    out = tmp_path / "embeddings.safetensors"
    example = REPO_ROOT / "examples" / "sentence_transformers_release.py"
    run_user_process([str(example), str(release), "--output", str(out)], tmp_path)
    got = load_file(str(out))
    for task in ("base", "tc"):
        torch.testing.assert_close(got[f"st.{task}"], got[f"mtpf.{task}"], atol=1e-5, rtol=0)
    assert not torch.allclose(got["st.base"], got["st.tc"], atol=1e-3)
    texts = sentence_transformers_example_texts()
    peft_model, tokenizer = load_release(release, ["tc"])
    torch.testing.assert_close(got["mtpf.tc"], peft_model.encode(texts, tokenizer), atol=1e-5, rtol=0)
    settings = json.loads((release / "backbone" / "sentence_bert_config.json").read_text())
    assert settings["max_seq_length"] == MtpfConfig.from_pretrained(release / "backbone").max_seq_length


def sentence_transformers_example_texts() -> list[str]:
    path = REPO_ROOT / "examples" / "sentence_transformers_release.py"
    spec = importlib.util.spec_from_file_location("st_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TEXTS


def test_active_slot_merges_at_load_and_not_twice(trained_release, tmp_path):
    release, expected = trained_release
    merged = MtpfModel.from_pretrained(str(release / "backbone"), active_slot="tc").eval()
    assert merged.config.active_slot is None and merged.config.merged_slot == "tc"
    batch = AutoTokenizer.from_pretrained(release / "backbone")(example_texts(), padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).pooler_output, expected["tc.sentence"], atol=1e-5, rtol=0)
        merged.save_pretrained(tmp_path / "merged")
        again = MtpfModel.from_pretrained(str(tmp_path / "merged")).eval()
        torch.testing.assert_close(again(**batch).pooler_output, expected["tc.sentence"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="active_slot='qa'"):
        MtpfModel.from_pretrained(str(release / "backbone"), active_slot="qa")


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
    with pytest.raises(ReleaseError, match=r"rel: a release is already there; pass --overwrite"):
        init_release(str(tiny_encoder_dir), target, tasks=["tc"], tpl_layers=1, r=2, lora_alpha=4)
    init_release(str(tiny_encoder_dir), target, tasks=["tc"], tpl_layers=1, r=2, lora_alpha=4, overwrite=True)
    assert sorted(p.name for p in (target / "adapters").iterdir()) == ["tc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_a_folder_of_other_files_is_never_replaced(tiny_encoder_dir, tmp_path):
    target = tmp_path / "x"
    target.mkdir()
    (target / "important.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ReleaseError, match=r"x: not empty and not a release \(holds \['important\.txt'\]\)"):
            init_release(str(tiny_encoder_dir), target, tpl_layers=1, r=2, lora_alpha=4, overwrite=overwrite)
    assert (target / "important.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_failed_export_leaves_nothing_behind(tiny_encoder_dir, tmp_path):
    with pytest.raises(ValueError):
        init_release(str(tiny_encoder_dir), tmp_path / "rel", tpl_layers=9)
    assert list(tmp_path.iterdir()) == []


def test_export_failing_inside_the_write_keeps_the_old_release(tiny_encoder_dir, tmp_path, monkeypatch):
    """The backbone is already written to the staging folder when the adapter save fails."""
    import mtpf.release

    target = init_release(str(tiny_encoder_dir), tmp_path / "rel", tasks=["ner"], tpl_layers=1, r=2, lora_alpha=4)
    before = (target / "backbone" / "config.json").read_text()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mtpf.release, "save_adapter", failing_save)
    with pytest.raises(OSError, match="disk full"):
        init_release(str(tiny_encoder_dir), target, tasks=["tc"], tpl_layers=1, r=2, lora_alpha=4, overwrite=True)
    assert (target / "backbone" / "config.json").read_text() == before
    assert validate_release(target) == ["ner"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_init_into_the_current_folder(tiny_encoder_dir, tmp_path):
    empty, busy = tmp_path / "empty", tmp_path / "busy"
    empty.mkdir()
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    init = mtpf_command(
        "init", "--backbone", str(tiny_encoder_dir), "--output", ".", "--tpl_layers", "1", "--rank", "2", "--alpha", "4"
    )
    run_command(init, empty)
    assert validate_release(empty) == ["ner", "tc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]  # no hidden ..tmp-* left
    import subprocess

    refused = subprocess.run(init, cwd=busy, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "busy: not empty and not a release" in refused.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_missing_backbone_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/encoder: no such folder"):
        init_release("/nonexistent/encoder", tmp_path / "rel")
    assert not (tmp_path / "rel").exists()


def test_adapter_of_another_backbone_of_the_same_shape_is_refused(trained_release, tmp_path):
    """Same architecture, other weights: the shapes fit, only the recorded backbone digest tells."""
    import shutil

    release, _ = trained_release
    other = init_release(
        str(build_tiny_encoder(tmp_path / "twin", seed=7)), tmp_path / "twin-rel", tpl_layers=2, r=4, lora_alpha=8
    )
    mixed = tmp_path / "mixed"
    shutil.copytree(release, mixed)
    shutil.rmtree(mixed / "adapters" / "tc")
    shutil.copytree(other / "adapters" / "tc", mixed / "adapters" / "tc")
    with pytest.raises(ReleaseError, match=r"adapters/tc/mtpf_base\.json: adapter 'tc' was made for another"):
        validate_release(mixed)
    model = MtpfModel.from_pretrained(str(mixed / "backbone"))
    with pytest.raises(ValueError, match=r"tc/mtpf_base\.json: this adapter was made for another backbone"):
        model.load_task_adapters(["tc"])
    result = subprocess_run([sys.executable, "-m", "mtpf", "info", str(mixed)])
    assert result.returncode != 0 and "was made for another backbone" in result.stderr


def subprocess_run(command: list[str]):
    import subprocess

    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"r": 8}, r"adapter_config\.json: r=8, but adapter_model\.safetensors holds rank 4"),
        ({"target_modules": ["query", "value"]}, r"adapter_config\.json: target_modules .* leaves out"),
        ({"target_modules": ["query", "key", "value", "dense"]}, r"adapter_config\.json: target_modules .* names"),
    ],
)
def test_adapter_config_that_disagrees_with_its_weights_is_named(trained_release, tmp_path, edit, message):
    """An edited r or target_modules: PEFT would drop trained weights with a warning, or fail without a file name."""
    import shutil

    release, _ = trained_release
    edited = tmp_path / "edited"
    shutil.copytree(release, edited)
    config_path = edited / "adapters" / "tc" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **edit}))
    with pytest.raises(ValueError, match=message):
        validate_release(edited)
    model = MtpfModel.from_pretrained(str(edited / "backbone"))
    with pytest.raises(ValueError, match=message):
        model.load_task_adapters(["tc"])


def test_release_files_are_readable_by_others(trained_release):
    release, _ = trained_release
    mask = os.umask(0)
    os.umask(mask)
    for path in release.rglob("*.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


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
        mtpf_command(
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
        ),
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
