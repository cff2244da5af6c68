"""`mtpf export`: one ONNX graph per app or slot, equal to PyTorch in fp32, int8 judged honestly."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoTokenizer

from mtpf.export import ExportError, export, exportable_slot
from mtpf.export.onnx import INT8_MAX_F1_DROP, INT8_MIN_COSINE, int8_fallbacks, nodes_of_modules
from tests.conftest import REPO_ROOT, SHARED_DIR, mtpf_command, run_command

TEXTS = [json.loads(line)["text"] for line in (SHARED_DIR / "data/tc/banking77/test.jsonl").open()][:40]


def export_app(app_dir, tmp_path) -> tuple[dict, dict, dict]:
    """`python -m mtpf export APP --quantize int8`, run from another folder (the app's test set is found where
    finetune read it, not by a cwd-relative default): the report and its fp32 and int8 entries."""
    out = tmp_path / "onnx"
    run_command(
        mtpf_command("export", str(app_dir), "--output", str(out), "--quantize", "int8", "--sentences", "60"),
        tmp_path,
    )
    report = json.loads((out / "export_report.json").read_text())
    return report, report["artifacts"]["model.onnx"], report["artifacts"]["model.int8.onnx"]


def test_ner_app_exports_to_one_graph_that_matches_pytorch(app, tmp_path):
    _, app_dir = app
    out = tmp_path / "onnx"
    report, fp32, int8 = export_app(app_dir, tmp_path)
    assert fp32["accepted"] and fp32["max_abs_diff"] < 1e-3 and fp32["f1_onnx"] == fp32["f1_pytorch"]
    assert int8["accepted"] == (int8["f1_drop"] <= INT8_MAX_F1_DROP)  # the verdict follows the measurement
    assert int8["megabytes"] < fp32["megabytes"] / 2
    assert report["output"] == "logits" and report["id2label"]["0"] == "O"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    batch = tokenizer(["Geoffrey Hinton works at Google ."], return_tensors="np")
    (logits,) = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    assert logits.shape == (1, batch["input_ids"].shape[1], len(report["id2label"]))


def test_slot_exports_the_normalised_sentence_embedding(slotted_release, tmp_path):
    exportable = exportable_slot(str(slotted_release), "tc", TEXTS)
    out = export(exportable, tmp_path / "tc", quantize="int8", source=str(slotted_release))
    report = json.loads((out / "export_report.json").read_text())
    fp32, int8 = report["artifacts"]["model.onnx"], report["artifacts"]["model.int8.onnx"]
    assert fp32["accepted"] and fp32["min_cosine"] > 0.99999
    assert int8["accepted"] == (int8["min_cosine"] >= INT8_MIN_COSINE)
    for refused in int8["refused_tries"]:  # every try before the last one failed its check
        assert refused["min_cosine"] < INT8_MIN_COSINE
    config = exportable.module.model.config
    (_, ffn_output), (_, with_last_layer) = int8_fallbacks(config)
    projections = nodes_of_modules(out / "model.onnx", ffn_output)  # the traced graph's FFN output matmuls, one a layer
    assert len(projections) == config.num_layers
    assert set(projections) < set(nodes_of_modules(out / "model.onnx", with_last_layer))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = exportable.tokenizer(TEXTS[:3], padding=True, return_tensors="np")
    (embeddings,) = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)  # the model's own definition
    with pytest.raises(ExportError, match="an export is already there"):
        export(exportable, out)
    with pytest.raises(ExportError, match="no trained slot 'qa'"):
        exportable_slot(str(slotted_release), "qa", TEXTS)


def test_classifier_app_exports_its_class_logits(classifier_app, tmp_path):
    _, app_dir = classifier_app
    out = tmp_path / "onnx"
    report, fp32, int8 = export_app(app_dir, tmp_path)
    assert fp32["accepted"] and fp32["max_abs_diff"] < 1e-3 and fp32["prediction_agreement"] == 100.0
    assert int8["accepted"] == (int8["accuracy_drop"] <= INT8_MAX_F1_DROP)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = AutoTokenizer.from_pretrained(out / "tokenizer")(
        ["i am so happy", "this is awful"], padding=True, return_tensors="np"
    )
    (logits,) = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    assert logits.shape == (2, len(report["id2label"]))


def test_an_app_is_exported_only_on_the_backbone_it_was_trained_on(app, tmp_path):
    """`--backbone OTHER` of the same shape would export, and call "accepted", weights the app was never trained on."""
    import shutil

    from mtpf.apps import AppError
    from mtpf.export import exportable_app

    release, app_dir = app
    twin = tmp_path / "twin"
    shutil.copytree(release / "backbone", twin)
    weights = twin / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # same shapes, another digest
    with pytest.raises(AppError, match="trained on another backbone"):
        exportable_app(app_dir, str(twin))
    with pytest.raises(ExportError, match="not a release backbone folder"):
        exportable_app(app_dir, str(tmp_path))


def test_kill_9_during_export_leaves_nothing_read_as_complete(slotted_release, tmp_path):
    """The export is written in a staging folder and renamed into place: killed at any moment, the output is absent
    (never a half export), and the next run repairs the leftovers and completes."""
    import subprocess
    import time

    out = tmp_path / "export"
    command = mtpf_command("export", str(slotted_release), "--slot", "tc", "--output", str(out), "--sentences", "20")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob(".export.tmp-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not out.exists() or (out / "export_report.json").is_file()  # all or nothing
    if not out.exists():
        assert list(tmp_path.glob(".export.tmp-*"))  # it was killed mid-write
        run_command(command, REPO_ROOT)
    assert json.loads((out / "export_report.json").read_text())["artifacts"]["model.onnx"]["accepted"]
    assert not list(tmp_path.glob(".export.tmp-*"))
