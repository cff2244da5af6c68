"""`mtpf export RELEASE --shared APP ...`: one backbone graph, one onnxruntime adapter file per app."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer

from mtpf.export import ExportError, shared_apps
from mtpf.models import load_model
from tests.conftest import SHARED_DIR, mtpf_command, run_command
from tests.export.test_onnx import TEXTS


def test_three_apps_run_from_one_backbone_file(app, classifier_app, tmp_path):
    release, ner_app = app
    _, classifier = classifier_app
    out = tmp_path / "shared"
    command = [
        "--shared",
        str(ner_app),
        str(classifier),
        "--slot",
        "tc",
        "--quantize",
        "int8",
        "--sentences",
        "60",
        "--texts",
        str(SHARED_DIR / "data/tc/banking77/test.jsonl"),
    ]
    run_command([sys.executable, "-m", "mtpf", "export", str(release), "--output", str(out), *command], tmp_path)
    report = json.loads((out / "export_report.json").read_text())
    assert sorted(p.name for p in out.glob("*.onnx")) == ["backbone.int8.onnx", "backbone.onnx"]
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        "app.onnx_adapter",
        "classifier.onnx_adapter",
        "tc.onnx_adapter",
    ]
    assert {name: entry["task"] for name, entry in report["apps"].items()} == {
        "app": "ner",
        "classifier": "classification",
        "tc": "embedding",
    }
    for precision in ("backbone.onnx", "backbone.int8.onnx"):  # the graph with no adapter, against the plain backbone
        assert {"min_cosine", "max_abs_diff", "accepted"} <= set(report["base"][precision])
    assert report["base"]["backbone.onnx"]["accepted"]
    for entry in report["apps"].values():  # every app equals its own merged PyTorch model through the shared graph
        assert entry["backbone.onnx"]["accepted"] and entry["backbone.onnx"]["max_abs_diff"] < 1e-3
        assert "accepted" in entry["backbone.int8.onnx"]
        assert entry["adapter_megabytes"] < report["backbones"]["backbone.onnx"]["megabytes"] / 4
    # Without an adapter the graph is the plain backbone: the release's own sentence embedding.
    session = ort.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    encoded = AutoTokenizer.from_pretrained(out / "tokenizer")(TEXTS[:4], padding=True, return_tensors="np")
    batch = {key: encoded[key] for key in ("input_ids", "attention_mask")}
    (embedding,) = session.run(["sentence_embedding"], batch)
    loaded = load_model(str(release))
    expected = loaded.fresh_backbone().eval()(**{k: torch.from_numpy(v) for k, v in batch.items()}).pooler_output
    np.testing.assert_allclose(embedding, expected.detach().numpy(), atol=1e-5)


def test_an_app_of_another_backbone_is_refused(app, tmp_path):
    release, ner_app = app
    stranger = tmp_path / "stranger"
    shutil.copytree(ner_app, stranger)
    (stranger / "mtpf_base.json").write_text(json.dumps({"backbone_sha256": "0" * 64}))
    with pytest.raises(ExportError, match="trained on another backbone"):
        shared_apps(str(release), [str(stranger)], [], TEXTS)
    with pytest.raises(ExportError, match="no trained slot 'qa'"):
        shared_apps(str(release), [], ["qa"], TEXTS)
    with pytest.raises(ExportError, match="give check sentences"):  # `base` is checked on them
        shared_apps(str(release), [str(ner_app)], [], [])


def test_a_shared_export_may_hold_the_slot_alone(slotted_release, tmp_path):
    """`--shared` with no app: the backbone graph and the slot's adapter (what `mtpf serve --backend onnx` needs to
    serve embeddings before any app exists)."""
    out = tmp_path / "slot-only"
    texts = str(SHARED_DIR / "data/tc/banking77/test.jsonl")
    run_command(
        mtpf_command(
            "export",
            str(slotted_release),
            "--shared",
            "--slot",
            "tc",
            "--output",
            str(out),
            "--sentences",
            "20",
            "--texts",
            texts,
        ),
        tmp_path,
    )
    report = json.loads((out / "export_report.json").read_text())
    assert list(report["apps"]) == ["tc"] and report["apps"]["tc"]["backbone.onnx"]["accepted"]


def test_an_int8_graph_that_fails_a_check_is_quantised_again_with_more_in_fp32(slotted_release, tmp_path, monkeypatch):
    """A refused first try re-quantises with the FFN output projections left in fp32 (the single-app export's
    ladder), and every verdict in the report is the second try's."""
    import onnx

    import mtpf.export.shared as shared_module
    from mtpf.export import export_shared

    first_tries = []

    def refuse_the_first_int8_check(report: dict, int8: bool) -> bool:
        if int8 and not first_tries:
            first_tries.append(report)
            return False
        return report["max_abs_diff"] < 1e-3 if not int8 else report["min_cosine"] >= 0.99

    monkeypatch.setattr(shared_module, "accepted", refuse_the_first_int8_check)
    source = shared_apps(str(slotted_release), [], ["tc"], TEXTS)
    out = export_shared(source, tmp_path / "int8", quantize="int8")
    report = json.loads((out / "export_report.json").read_text())
    int8 = report["backbones"]["backbone.int8.onnx"]
    assert int8["refused_tries"] == [{"kept_fp32": "nothing", "refused": ["base"]}]
    assert int8["kept_fp32"] == "ffn_output" and int8["nodes_kept_fp32"]
    kept = set(int8["nodes_kept_fp32"])
    graph = onnx.load(str(out / "backbone.int8.onnx")).graph
    assert kept <= {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")}  # still float matmuls
    assert {"base", "tc"} == {"base"} | set(report["apps"]) and "backbone.int8.onnx" in report["base"]
