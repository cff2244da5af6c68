"""`mtpf serve` as users meet it: a real server in a subprocess on a free loopback port, a real HTTP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from mtpf.models import load_model
from mtpf.serve.server import ServeArguments, build
from tests.conftest import REPO_ROOT, free_port

KEY = "s3cret-key"


class Server:
    """`python -m mtpf serve ...` in a subprocess; `url` once /health answers."""

    def __init__(self, release: Path, *args: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.log = log
        if "--apps_state" not in args:  # each test server keeps its own apps, not the release's shared file
            args = (*args, "--apps_state", str(log.with_suffix(".apps.json")))
        self.command = [sys.executable, "-m", "mtpf", "serve", str(release), "--port", str(self.port), *args]
        command = self.command
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        self.process.kill()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(app, classifier_app, tmp_path_factory):
    release, ner_app = app
    _, classifier = classifier_app
    log = tmp_path_factory.mktemp("serve") / "server.log"
    running = Server(
        release,
        "--app",
        f"tagger={ner_app}",
        "--app",
        f"emotion={classifier}",
        "--max_wait_ms",
        "50",
        "--api_key",
        KEY,
        log=log,
    )
    client = httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    yield running, client, release, ner_app, classifier
    client.close()
    running.stop()


def in_process_app(release: Path, app_dir: Path):
    from examples.app_pipeline import load_app

    return load_app(str(release / "backbone"), str(app_dir))


def test_embeddings_equal_the_in_process_slot(server):
    _, client, release, _, _ = server
    texts = ["The bank approved my card.", "Where is my refund?", "a"]
    response = client.post("/v1/embeddings", json={"model": "tc", "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] > 0
    got = torch.tensor([d["embedding"] for d in body["data"]])
    loaded = load_model(str(release))
    expected = loaded.encoder_for("tc").encode(texts, loaded.tokenizer)
    cosine = torch.nn.functional.cosine_similarity(got, expected)
    assert bool((cosine > 1 - 1e-5).all()), cosine


def test_classify_and_ner_equal_the_in_process_apps(server):
    _, client, release, ner_app, classifier = server
    text = "i feel wonderful and calm today"
    response = client.post("/v1/classify", json={"model": "emotion", "input": text})
    assert response.status_code == 200, response.text
    (got,) = response.json()["data"]
    model, tokenizer, _ = in_process_app(release, classifier)
    with torch.no_grad():
        probabilities = model(**tokenizer([text], return_tensors="pt")).logits.softmax(-1)[0]
    assert got["label"] == model.config.id2label[int(probabilities.argmax())]
    assert got["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)

    sentence = "Geoffrey Hinton studied neural networks at the University of Toronto ."
    response = client.post("/v1/ner", json={"model": "tagger", "input": [sentence]})
    assert response.status_code == 200, response.text
    entities = response.json()["data"][0]["entities"]
    model, tokenizer, _ = in_process_app(release, ner_app)
    encoded = tokenizer([sentence], return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        tags = model(**encoded).logits[0].argmax(-1).tolist()
    firsts = [p for p, w in enumerate(encoded.word_ids(0)) if w is not None and w != encoded.word_ids(0)[p - 1]]
    expected = [model.config.id2label[tags[p]].partition("-")[2] or "O" for p in firsts]  # each word's entity type
    served = ["O"] * len(firsts)
    for entity in entities:
        for word, position in enumerate(firsts):
            if entity["start"] <= offsets[position][0] < entity["end"]:
                served[word] = entity["entity_group"]
    assert served == expected
    for entity in entities:
        assert sentence[entity["start"] : entity["end"]] == entity["word"]
    from transformers import pipeline

    from examples.app_pipeline import HEADS

    _, pipeline_task, options = HEADS["ner"]  # the example's pipeline: aggregation_strategy="first"
    tagger = pipeline(pipeline_task, model=model, tokenizer=tokenizer, **options)
    expected = [(e["entity_group"], e["start"], e["end"]) for e in tagger(sentence)]
    assert [(e["entity_group"], e["start"], e["end"]) for e in entities] == expected


def test_concurrent_requests_of_three_models_share_batches_and_equal_single_answers(server):
    _, client, _, _, _ = server
    requests = [
        ("/v1/embeddings", "tc", "where is my card"),
        ("/v1/classify", "emotion", "i am so angry"),
        ("/v1/ner", "tagger", "Alan Turing worked in Manchester ."),
        ("/v1/embeddings", "base", "hello"),
    ] * 3
    ask = lambda request: client.post(request[0], json={"model": request[1], "input": request[2]})  # noqa: E731
    single = [ask(request).json()["data"] for request in requests[:4]]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert all(r.status_code == 200 for r in together)
    for index, response in enumerate(together):
        reference = single[index % 4][0]
        got = response.json()["data"][0]
        if "embedding" in got:
            assert torch.allclose(torch.tensor(got["embedding"]), torch.tensor(reference["embedding"]), atol=1e-5)
        elif "label" in got:
            assert got["label"] == reference["label"] and got["score"] == pytest.approx(reference["score"], abs=1e-5)
        else:
            assert [(e["entity_group"], e["start"]) for e in got["entities"]] == [
                (e["entity_group"], e["start"]) for e in reference["entities"]
            ]
    metrics = client.get("/metrics").text
    lines = [line.split() for line in metrics.splitlines() if line.startswith("mtpf_batch_rows")]
    rows = {name: float(value) for name, value in lines}
    assert rows["mtpf_batch_rows_count"] < rows["mtpf_batch_rows_sum"]  # some forward held several rows
    assert 'mtpf_request_seconds_bucket{endpoint="ner",le="+Inf",model="tagger"}' in metrics


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope", "input": "x"}, 404, "model 'nope' is not served"),
        ({"model": "tc", "input": []}, 422, "input is empty"),
        ({"model": "tc", "input": ["fine", "  "]}, 422, r"input\[1\] is empty"),
        ({"model": "tc", "input": "word " * 2000}, 422, r"input\[0\] has \d+ tokens"),
        ({"model": "tc", "input": ["x"] * 300}, 422, "at most 256 per request"),
        ({"model": "tc", "input": 7}, 422, "input"),
        ({"input": "x"}, 422, "model"),
        ({"model": "tc", "input": "x", "encoding_format": "hex"}, 422, "encoding_format: Input should be 'float' or"),
        ({"model": "tc", "input": "x", "dimensions": 64}, 400, "does not support truncating"),
        ({"model": "tc", "input": [[101, 7592, 102]]}, 400, "token ids"),
        ({"model": "tc", "input": [101, 7592, 102]}, 400, "token ids"),
    ],
)
def test_bad_requests_get_a_clear_4xx_in_openai_error_shape(server, body, status, message):
    import re

    _, client, _, _, _ = server
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status and re.search(message, response.text), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and re.search(message, error["message"])


def test_models_can_be_retrieved_one_by_one(server):
    _, client, _, _, _ = server
    assert client.get("/v1/models/tagger").json()["id"] == "tagger"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    unknown_route = client.get("/v1/nothing-here")
    assert unknown_route.status_code == 404 and "error" in unknown_route.json()


def test_bad_bodies_wrong_endpoint_and_missing_key_are_4xx(server):
    running, client, _, _, _ = server
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    not_utf8 = client.post("/v1/embeddings", content=b'{"model": "tc", "input": "\xff\xfe"}', headers=headers)
    assert not_utf8.status_code == 400 and "not UTF-8" in not_utf8.text
    huge = client.post("/v1/embeddings", content=b"x" * (10 * 2**20), headers=headers)
    assert huge.status_code == 413 and "over" in huge.text
    broken = client.post("/v1/embeddings", content=b'{"model": "tc", "input": ', headers=headers)
    assert broken.status_code == 422
    wrong = client.post("/v1/ner", json={"model": "emotion", "input": "x"})
    assert (
        wrong.status_code == 404
        and "is a classification app; it cannot answer /v1/ner (it answers /v1/embeddings, /v1/classify)"
        in wrong.json()["error"]["message"]
    )
    anonymous = httpx.post(f"{running.url}/v1/embeddings", json={"model": "tc", "input": "x"})
    assert anonymous.status_code == 401 and "API key" in anonymous.text
    assert httpx.get(f"{running.url}/health").status_code == 200  # liveness needs no key
    assert "mtpf_requests_total" in client.get("/metrics").text
    assert 'status="500"' not in client.get("/metrics").text


def test_apps_load_and_unload_without_a_restart(server, tmp_path):
    _, client, _, _, classifier = server
    assert client.delete("/v1/apps/emotion").status_code == 200
    gone = client.post("/v1/classify", json={"model": "emotion", "input": "x"})
    assert gone.status_code == 404 and "'emotion' is not served" in gone.text
    assert client.delete("/v1/apps/tc").status_code == 409  # a release slot is not an app
    added = client.post("/v1/apps", json={"name": "emotion", "path": str(classifier)})
    assert added.status_code == 201 and added.json()["kind"] == "classification"
    assert client.post("/v1/apps", json={"name": "emotion", "path": str(classifier)}).status_code == 409
    stranger = tmp_path / "stranger"
    import shutil

    shutil.copytree(classifier, stranger)
    (stranger / "mtpf_base.json").write_text(json.dumps({"backbone_sha256": "0" * 64}))
    refused = client.post("/v1/apps", json={"name": "stranger", "path": str(stranger)})
    assert refused.status_code == 422 and "another backbone" in refused.text
    (stranger / "mtpf_base.json").write_text((classifier / "mtpf_base.json").read_text())
    (stranger / "adapter_config.json").unlink()
    broken = client.post("/v1/apps", json={"name": "broken", "path": str(stranger)})
    assert broken.status_code == 422 and "not a readable PEFT adapter" in broken.text
    reserved = client.post("/v1/apps", json={"name": "__base__", "path": str(classifier)})  # PEFT's own name
    assert reserved.status_code == 422 and reserved.json()["error"]["param"] == "name"
    missing = client.post("/v1/apps", json={"name": "ghost", "path": str(tmp_path / "none")})
    assert missing.status_code == 404 and "not found" in missing.text
    assert client.post("/v1/classify", json={"model": "emotion", "input": "i am happy"}).status_code == 200
    names = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert sorted(names) == ["base", "emotion", "ner", "tagger", "tc"]


def test_broken_apps_are_refused_when_added(server, tmp_path):
    """A truncated adapter file, or fewer labels than the head has outputs, is a 422 at POST /v1/apps, not a 500
    on every later request (and on the other apps sharing its batches)."""
    import shutil

    _, client, _, _, classifier = server
    truncated = tmp_path / "truncated"
    shutil.copytree(classifier, truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused = client.post("/v1/apps", json={"name": "truncated", "path": str(truncated)})
    assert refused.status_code == 422 and "not a readable PEFT adapter" in refused.text, refused.text
    short = tmp_path / "short-labels"
    shutil.copytree(classifier, short)
    app = json.loads((short / "mtpf_app.json").read_text())
    app["id2label"] = dict(list(app["id2label"].items())[:1])
    (short / "mtpf_app.json").write_text(json.dumps(app))
    refused = client.post("/v1/apps", json={"name": "short", "path": str(short)})
    assert refused.status_code == 422 and "each output needs exactly one label" in refused.text, refused.text
    names = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert not names & {"truncated", "short"}


def test_deleting_an_app_under_load_never_fails_another_model(server, tmp_path):
    """Mixed load over three models while one app is deleted and a broken one is offered: every request of the
    healthy models answers 200; the deleted app's requests are answered or refused by name (404/409), never 500."""
    import shutil

    _, client, _, _, classifier = server
    victim = tmp_path / "victim"
    shutil.copytree(classifier, victim)
    assert client.post("/v1/apps", json={"name": "victim", "path": str(victim)}).status_code == 201
    broken = tmp_path / "broken"
    shutil.copytree(classifier, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 64)

    def call(model: str, index: int) -> tuple[str, int]:
        endpoint = {"victim": "/v1/classify", "tagger": "/v1/ner"}.get(model, "/v1/embeddings")
        response = client.post(endpoint, json={"model": model, "input": [f"request {index} of {model}"] * 4})
        return model, response.status_code

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(call, model, i) for i in range(30) for model in ("victim", "tc", "tagger")]
        time.sleep(0.2)
        deleted = client.delete("/v1/apps/victim")
        offered = client.post("/v1/apps", json={"name": "broken", "path": str(broken)})
        answers = [future.result(timeout=120) for future in futures]
    assert deleted.status_code == 200 and offered.status_code == 422
    healthy = [status for model, status in answers if model != "victim"]
    assert healthy == [200] * 60, answers
    assert {status for model, status in answers if model == "victim"} <= {200, 404, 409}, answers
    assert client.post("/v1/classify", json={"model": "victim", "input": "x"}).status_code == 404


def test_a_client_that_leaves_frees_its_rows(server):
    running, client, _, _, _ = server
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{running.url}/v1/embeddings",
            json={"model": "tc", "input": ["x"] * 200},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=0.02,
        )
    time.sleep(1.0)
    assert client.get("/health").status_code == 200
    assert client.post("/v1/embeddings", json={"model": "tc", "input": "still here"}).status_code == 200


def test_refuses_to_bind_beyond_loopback_without_a_key(app, tmp_path):
    release, _ = app
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("MTPF_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "mtpf", "serve", str(release), "--host", "0.0.0.0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "--api_key" in result.stderr


def test_refuses_a_negative_merged_weight_budget(app):
    release, _ = app
    with pytest.raises(SystemExit, match="--merged_weights_mb -1"):
        build(ServeArguments(release=str(release), merged_weights_mb=-1))


def wait_for_rows_in_flight(url: str, rows: int, seconds: float = 30) -> None:
    """Until the server's `mtpf_rows_in_flight` gauge reaches `rows` (a busy machine may take a while to accept)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        value = next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mtpf_rows_in_flight "))
        if float(value) >= rows:
            return
        time.sleep(0.01)
    raise AssertionError(f"{rows} rows never were in flight")


def test_graceful_shutdown_answers_every_accepted_request(app, tmp_path):
    release, _ = app
    running = Server(release, "--max_wait_ms", "2000", log=tmp_path / "server.log")
    with ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(
                httpx.post, f"{running.url}/v1/embeddings", json={"model": "tc", "input": f"text {i}"}, timeout=60
            )
            for i in range(6)
        ]
        wait_for_rows_in_flight(running.url, 6)  # accepted and queued, the batch not yet formed (2 s wait)
        code = running.stop()
        statuses = [f.result().status_code for f in futures]
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is the signal's
    assert statuses == [200] * 6 and code in (0, -signal.SIGTERM), running.log.read_text()[-2000:]
    assert "Application shutdown complete" in running.log.read_text()


def test_apps_added_over_http_survive_kill_9_and_a_restart(app, classifier_app, tmp_path):
    release, _ = app
    _, classifier = classifier_app
    state = tmp_path / "apps.json"
    first = Server(release, "--apps_state", str(state), log=tmp_path / "first.log")
    try:
        added = httpx.post(f"{first.url}/v1/apps", json={"name": "mood", "path": str(classifier)}, timeout=60)
        assert added.status_code == 201
    finally:
        first.kill()  # right after the 201: nothing else had a chance to run
    assert json.loads(state.read_text())["apps"] == {"mood": str(classifier)}
    second = Server(release, "--apps_state", str(state), log=tmp_path / "second.log")
    try:
        answer = httpx.post(f"{second.url}/v1/classify", json={"model": "mood", "input": "i am so happy"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["data"][0]["label"]
        assert httpx.delete(f"{second.url}/v1/apps/mood", timeout=60).status_code == 200
    finally:
        second.stop()
    assert json.loads(state.read_text())["apps"] == {}
    state.write_text('{"apps": {"gone": "/nonexistent/app"}}')  # an app folder removed since: left out, logged
    third = Server(release, "--apps_state", str(state), log=tmp_path / "third.log")
    try:
        names = {m["id"] for m in httpx.get(f"{third.url}/v1/models", timeout=60).json()["data"]}
        assert "gone" not in names and "base" in names
    finally:
        third.stop()
    assert "app gone of" in (tmp_path / "third.log").read_text()


def test_large_bodies_do_not_stall_the_event_loop(server):
    """Six concurrent ~1 MB bodies are tokenised off the event loop: /health keeps answering at once."""
    running, client, _, _, _ = server
    body = {"model": "tc", "input": [("lorem ipsum dolor " * 200)[:3900] + str(i) for i in range(256)]}
    answers: list[int] = []

    def send() -> None:
        answers.append(client.post("/v1/embeddings", json=body, timeout=300).status_code)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send) for _ in range(6)]
        time.sleep(0.2)
        latencies = []
        for _ in range(10):
            start = time.monotonic()
            assert httpx.get(f"{running.url}/health", timeout=30).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        for future in futures:
            future.result(timeout=300)
    assert max(latencies) < 2.0, latencies  # it took 5.7 s when tokenisation ran on the loop
    assert all(400 <= status < 500 for status in answers), answers  # too many tokens: a clear 422, never a 500
