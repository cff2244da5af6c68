"""`mtpf serve --backend onnx`: the same API from the shared-backbone ONNX export, answers equal to the PyTorch
backend's within the export's own fidelity bounds; unaccepted apps refused with the reason."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from mtpf.serve.engine import Engine, Row
from mtpf.serve.onnx_engine import OnnxEngine
from tests.conftest import SHARED_DIR, mtpf_command, run_command
from tests.serve.test_server import Server

TEXTS = ["Geoffrey Hinton studied at the University of Toronto .", "i feel wonderful and calm today", "a"]


@pytest.fixture(scope="module")
def shared_export(app, classifier_app, tmp_path_factory):
    release, ner_app = app
    _, classifier = classifier_app
    out = tmp_path_factory.mktemp("onnx-serve") / "export"
    run_command(
        mtpf_command(
            "export",
            str(release),
            "--output",
            str(out),
            "--shared",
            str(ner_app),
            str(classifier),
            "--slot",
            "tc",
            "--sentences",
            "40",
            "--texts",
            str(SHARED_DIR / "data/tc/banking77/test.jsonl"),
        ),
        out.parent,
    )
    return release, ner_app, classifier, out


def answers(engine, name: str, task: str) -> list:
    served = engine.lookup(name, task)
    return engine.run([Row(served, text, task, 0) for text in TEXTS])


def test_onnx_backend_answers_like_the_pytorch_backend(shared_export):
    release, ner_app, classifier, export = shared_export
    torch_engine = Engine(str(release))
    torch_engine.add_app(ner_app.name, str(ner_app))
    torch_engine.add_app(classifier.name, str(classifier))
    onnx_engine = OnnxEngine(str(release), str(export))
    assert sorted(onnx_engine.served) == sorted(["base", "tc", ner_app.name, classifier.name])  # what was exported
    for name in ("base", "tc", ner_app.name, classifier.name):
        got, expected = (
            np.array(answers(onnx_engine, name, "embeddings")),
            np.array(answers(torch_engine, name, "embeddings")),
        )
        assert np.abs(got - expected).max() < 1e-3, name  # the export's fp32 bound (FP32_MAX_ABS_DIFF)
    for got, expected in zip(
        answers(onnx_engine, classifier.name, "classify"), answers(torch_engine, classifier.name, "classify")
    ):
        assert got["label"] == expected["label"] and got["score"] == pytest.approx(expected["score"], abs=1e-3)
    for got, expected in zip(answers(onnx_engine, ner_app.name, "ner"), answers(torch_engine, ner_app.name, "ner")):
        assert [(e["entity_group"], e["start"], e["end"]) for e in got["entities"]] == [
            (e["entity_group"], e["start"], e["end"]) for e in expected["entities"]
        ]


def test_an_unaccepted_app_is_refused_with_the_reason(shared_export, tmp_path):
    import shutil

    release, ner_app, _, export = shared_export
    edited = tmp_path / "export"
    shutil.copytree(export, edited)
    report = json.loads((edited / "export_report.json").read_text())
    report["apps"][ner_app.name]["backbone.onnx"]["accepted"] = False
    (edited / "export_report.json").write_text(json.dumps(report))
    engine = OnnxEngine(str(release), str(edited))
    assert ner_app.name not in engine.served
    from mtpf.serve.engine import ServeError

    with pytest.raises(ServeError, match="not accepted by the fidelity check"):
        engine.lookup(ner_app.name, "ner")
    with pytest.raises(ServeError, match="no int8 backbone"):
        OnnxEngine(str(release), str(export), precision="int8")


def test_the_bare_backbone_is_served_only_with_an_accepted_check(shared_export, tmp_path):
    """`base` runs the graph with no adapter: the export checks it against the plain backbone like any app, and an
    export without that check (or with a refused one) does not serve it."""
    import shutil

    from mtpf.serve.engine import ServeError

    release, _, _, export = shared_export
    report = json.loads((export / "export_report.json").read_text())
    assert report["base"]["backbone.onnx"]["accepted"] and report["base"]["backbone.onnx"]["min_cosine"] > 0.999
    edited = tmp_path / "export"
    shutil.copytree(export, edited)
    for verdict, reason in (({"accepted": False}, "not accepted by the fidelity check"), (None, "no fidelity check")):
        report["base"] = {} if verdict is None else {"backbone.onnx": verdict}
        (edited / "export_report.json").write_text(json.dumps(report))
        engine = OnnxEngine(str(release), str(edited))
        assert "base" not in engine.served and "tc" in engine.served
        with pytest.raises(ServeError, match=reason):
            engine.lookup("base", "embeddings")


def test_serve_backend_onnx_over_http(shared_export, tmp_path):
    release, ner_app, classifier, export = shared_export
    server = Server(release, "--backend", "onnx", "--onnx", str(export), log=tmp_path / "server.log")
    try:
        embedded = httpx.post(f"{server.url}/v1/embeddings", json={"model": "tc", "input": TEXTS}, timeout=60)
        assert embedded.status_code == 200 and len(embedded.json()["data"]) == 3
        tagged = httpx.post(f"{server.url}/v1/ner", json={"model": ner_app.name, "input": TEXTS[0]}, timeout=60)
        assert tagged.status_code == 200
        refused = httpx.post(f"{server.url}/v1/apps", json={"name": "new", "path": str(classifier)}, timeout=60)
        assert refused.status_code == 409 and "serves the apps of its export" in refused.text
    finally:
        server.stop()
