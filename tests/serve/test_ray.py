"""`mtpf serve --ray`: two replicas on a local Ray cluster answer three apps exactly as the single-process server does.

The apps are two real ones (a tagger, a classifier) and a copy of the classifier under a third name; each replica
holds at most two, so serving all three also unloads and reloads apps (Ray's LRU per replica)."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from mtpf.serve.app import create_app
from mtpf.serve.engine import Engine
from mtpf.serve.routes import ServeOptions
from mtpf.serve.server import ServeArguments
from tests.conftest import free_port

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'mtpf[ray]') is part of the dev install")

TEXTS = ["Alan Turing worked in Manchester .", "i feel wonderful and calm today"]
REQUESTS = [
    ("/v1/ner", "tagger"),
    ("/v1/classify", "emotion"),
    ("/v1/classify", "emotion-copy"),
    ("/v1/embeddings", "tc"),
    ("/v1/embeddings", "emotion"),
    ("/v1/classify", "emotion"),  # back to an app that may have been unloaded meanwhile
]


@pytest.fixture(scope="module")
def apps_dir(app, classifier_app, tmp_path_factory):
    _, tagger = app
    _, classifier = classifier_app
    folder = tmp_path_factory.mktemp("ray-apps")
    shutil.copytree(tagger, folder / "tagger")
    shutil.copytree(classifier, folder / "emotion")
    shutil.copytree(classifier, folder / "emotion-copy")
    shutil.copytree(classifier, folder / "broken")
    weights = folder / "broken" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated adapter: the replica refuses to load it
    return folder


def single_process_answers(release, apps_dir) -> list[dict]:
    engine = Engine(str(release))
    for name in ("tagger", "emotion", "emotion-copy"):
        engine.add_app(name, str(apps_dir / name))
    with TestClient(create_app(engine)) as client:
        return [client.post(path, json={"model": model, "input": TEXTS}).json() for path, model in REQUESTS]


def test_two_replicas_answer_three_apps_as_one_process_does(app, apps_dir, monkeypatch):
    from ray import serve

    from mtpf.serve.ray_serve import PATIENT_PROXY, build_application

    for key, value in PATIENT_PROXY.items():
        monkeypatch.setenv(key, value)
    release, _ = app
    expected = single_process_answers(release, apps_dir)
    port = free_port()
    args = ServeArguments(release=str(release), ray=True, apps_dir=str(apps_dir), replicas=2, max_apps_per_replica=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(args, ServeOptions()), name="mtpf", route_prefix="/", blocking=False)
        deadline = time.monotonic() + 300
        while serve.status().applications["mtpf"].status != "RUNNING" and time.monotonic() < deadline:
            time.sleep(1)
        replicas = serve.status().applications["mtpf"].deployments["Replica"].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            answers = [client.post(path, json={"model": model, "input": TEXTS}) for path, model in REQUESTS]
            listed = client.get("/v1/models").json()
            refused = client.post("/v1/apps", json={"name": "x", "path": "/tmp"})
            wrong_kind = client.post("/v1/ner", json={"model": "emotion", "input": TEXTS})
            invalid = client.post("/v1/classify", json={"model": "emotion", "input": []})
            broken = client.post("/v1/classify", json={"model": "broken", "input": TEXTS})
    finally:
        serve.shutdown()
        ray.shutdown()
    for (path, model), answer, reference in zip(REQUESTS, answers, expected):
        assert answer.status_code == 200, (path, model, answer.text)
        got = answer.json()
        if path == "/v1/embeddings":
            for row, ref in zip(got["data"], reference["data"]):
                assert row["embedding"] == pytest.approx(ref["embedding"], abs=1e-5)
        elif path == "/v1/classify":
            assert [r["label"] for r in got["data"]] == [r["label"] for r in reference["data"]]
            assert [r["score"] for r in got["data"]] == pytest.approx([r["score"] for r in reference["data"]], abs=1e-5)
        else:
            assert [[e["entity_group"] for e in r["entities"]] for r in got["data"]] == [
                [e["entity_group"] for e in r["entities"]] for r in reference["data"]
            ]
    assert {"tagger", "emotion", "emotion-copy", "tc", "base"} <= {m["id"] for m in listed["data"]}
    assert refused.status_code == 405 and "folders of" in refused.json()["error"]["message"]
    assert wrong_kind.status_code == 404 and "/v1/classify" in wrong_kind.json()["error"]["message"]  # OpenAI shape
    assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "input"
    assert broken.status_code == 422 and "not a readable PEFT adapter" in broken.json()["error"]["message"]
