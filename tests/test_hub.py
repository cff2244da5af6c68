"""Publishing: dry-run folders, model cards, reading them back as a user, and uploads to a local test server."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from safetensors.torch import load_file

from modeling_mtpf import MtpfForTokenClassification
from mtpf.hub import HubTarget, PublishError, publish, stage_release
from mtpf.quality.card import quality_section, recipe_quality
from mtpf.release import BASE_MARKER, ReleaseError, init_release, load_release, release_hash
from mtpf.results import SCHEMA, ResultRecord, ResultsSchemaError, averaged, load_results, save_results
from mtpf.weights import tiny_encoder_dir as packaged_tiny_encoder
from push_to_hub import main as push_main
from tests.conftest import REPO_ROOT, run_command, train_smoke_release

REPO_ID = "acme/mtpf-mini"
TOKEN = "hf_testtoken_never_written_anywhere"


@pytest.fixture(scope="module")
def trained_release(tmp_path_factory):
    """A short real MTPF-TPL run (trained slots), exported."""
    workdir = tmp_path_factory.mktemp("hub-run")
    return train_smoke_release(workdir, workdir / "pl", "--max_steps", "3", "--save_strategy", "no")


def conll_f1(value: float, **overrides) -> ResultRecord:
    fields = dict(model="rel", family="ner", dataset="conll2003", dataset_name="CoNLL-2003", split="test", metric="f1")
    return ResultRecord(**{**fields, "value": value, **overrides})


@pytest.fixture
def results_file(tmp_path, trained_release) -> Path:
    """Scores measured on `trained_release` (its config hash), as mtpf-eval records them."""
    weights = release_hash(trained_release, ["ner", "tc"])
    records = [
        conll_f1(88.5, seed=0, config_hash=weights),
        conll_f1(88.9, seed=1, config_hash=weights),
        conll_f1(66.1, fraction=0.1, config_hash=weights),
        conll_f1(
            79.5,
            family="tc",
            dataset="mteb/banking77",
            dataset_name="Banking77",
            metric="accuracy",
            config_hash=weights,
            experiments=[79.0, 80.0],
        ),
    ]
    path = tmp_path / "results.json"
    save_results(records, path)
    return path


def card_rows(path: Path) -> set[tuple]:
    card = ModelCard.load(path)
    return {
        (r.task_type, r.dataset_type, r.dataset_split, r.dataset_args["train_fraction"], r.metric_type, r.metric_value)
        for r in card.data.eval_results or []
    }


def expected_rows(results: Path, family: str | None = None) -> set[tuple]:
    kinds = {"ner": "token-classification", "tc": "text-classification"}
    return {
        (kinds[r.family], r.dataset, r.split, r.fraction, r.metric, r.value)
        for r, _ in averaged(load_results(results))
        if family in (None, r.family)
    }


def test_dry_run_writes_the_repos_with_cards(trained_release, results_file, tmp_path):
    published = push_main(
        [str(trained_release), "--repo-id", REPO_ID, "--results", str(results_file), "--dry-run", str(tmp_path)]
    )
    assert published == [REPO_ID, f"{REPO_ID}-ner", f"{REPO_ID}-tc"]
    backbone, ner = tmp_path / REPO_ID, tmp_path / f"{REPO_ID}-ner"
    config = json.loads((backbone / "config.json").read_text())
    assert config["task_slots"]["ner"]["adapter"] == f"{REPO_ID}-ner"
    adapter_config = json.loads((ner / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == REPO_ID
    assert card_rows(backbone / "README.md") == expected_rows(results_file)
    assert card_rows(ner / "README.md") == expected_rows(results_file, "ner")
    assert card_rows(tmp_path / f"{REPO_ID}-tc" / "README.md") == expected_rows(results_file, "tc")
    assert ("token-classification", "conll2003", "test", 1.0, "f1", 88.7) in card_rows(
        backbone / "README.md"
    )  # seeds averaged
    card = ModelCard.load(backbone / "README.md")
    assert card.data.library_name == "transformers" and "mtpf" in card.data.tags
    assert f'PeftModel.from_pretrained(backbone, "{REPO_ID}-ner"' in card.text
    assert "mode: `mtpf_tpl`" in card.text
    assert ModelCard.load(ner / "README.md").data.base_model == REPO_ID


def test_user_loads_published_folders_by_repo_id(trained_release, tmp_path):
    """Offline path mapping: from the dry-run folder every repo id is a relative path."""
    push_main([str(trained_release), "--repo-id", REPO_ID, "--dry-run", str(tmp_path / "hub")])
    out_hub = tmp_path / "hub.safetensors"
    script = str(REPO_ROOT / "examples" / "load_from_hub.py")
    result = run_command(
        [sys.executable, script, "--repo-id", REPO_ID, "--output", str(out_hub)],
        tmp_path / "hub",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    assert "'entity'" in result.stdout
    hub = load_file(str(out_hub))
    assert not torch.allclose(hub["ner.sentence"], hub["tc.sentence"])
    # the unpublished release, loaded in this process, gives the same outputs
    peft_model, tokenizer = load_release(trained_release)
    batch = tokenizer(example_texts(), padding=True, return_tensors="pt")
    with torch.no_grad():
        with peft_model.disable_adapter():
            torch.testing.assert_close(hub["base"], peft_model(**batch).pooler_output, atol=1e-6, rtol=0)
        for task in ("ner", "tc"):
            peft_model.set_adapter(task)
            torch.testing.assert_close(hub[f"{task}.sentence"], peft_model(**batch).pooler_output, atol=1e-6, rtol=0)
        torch.manual_seed(0)
        head = MtpfForTokenClassification.from_pretrained(str(trained_release / "backbone"), num_labels=5)
        tagger = PeftModel.from_pretrained(head, str(trained_release / "adapters" / "ner")).merge_and_unload().eval()
        torch.testing.assert_close(hub["ner.token_logits"], tagger(**batch).logits, atol=1e-5, rtol=0)


def example_texts() -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_from_hub", REPO_ROOT / "examples" / "load_from_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TEXTS


# ----- uploads against a local test server ---------------------------------------------------------------


class FakeHub(BaseHTTPRequestHandler):
    """Just enough of the Hub API for create_repo, create_branch and upload_folder; records every call."""

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?")[0]
        server.calls.append({"path": path, "auth": self.headers.get("Authorization", "")})
        base = f"http://127.0.0.1:{server.server_port}"
        if path == "/api/repos/create":
            data = json.loads(body)
            repo = f"{data.get('organization')}/{data['name']}" if data.get("organization") else data["name"]
            server.created.append((repo, data.get("visibility", data.get("private"))))
            return self._reply(200, {"url": f"{base}/{repo}", "name": repo, "id": "1"})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in path:
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            if repo == server.fail_repo:
                return self._reply(500, {"error": "simulated outage"})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            files = {
                item["value"]["path"]: base64.b64decode(item["value"]["content"])
                for item in lines
                if item["key"] == "file"
            }
            server.commits.append(
                {"repo": repo, "revision": path.split("/commit/")[1], "message": header["summary"], "files": files}
            )
            return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/abc", "commitOid": "a" * 40})
        if path == "/api/validate-yaml":  # the client checks README metadata before committing
            server.validated.append(json.loads(body))
            return self._reply(200, {})
        if "/branch/" in path:
            server.branches.append(path)
            return self._reply(200, {})
        return self._reply(404, {"error": f"unexpected {path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    """Offline mode stays on for everything else; the client may talk to this loopback server only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.calls, server.created, server.commits, server.branches, server.validated = [], [], [], [], []
    server.fail_repo = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_upload_makes_one_commit_per_repo(trained_release, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    staged = stage_release(trained_release, HubTarget(REPO_ID, revision="v1"), tmp_path / "stage")
    api = HfApi(endpoint=f"http://127.0.0.1:{fake_hub.server_port}")
    assert publish(staged, api, private=True, revision="v1") == [REPO_ID, f"{REPO_ID}-ner", f"{REPO_ID}-tc"]
    assert fake_hub.created == [(REPO_ID, "private"), (f"{REPO_ID}-ner", "private"), (f"{REPO_ID}-tc", "private")]
    assert [c["repo"] for c in fake_hub.commits] == [REPO_ID, f"{REPO_ID}-ner", f"{REPO_ID}-tc"]
    assert [c["message"] for c in fake_hub.commits] == [
        "mtpf: upload backbone",
        "mtpf: upload ner adapter",
        "mtpf: upload tc adapter",
    ]
    assert {c["revision"] for c in fake_hub.commits} == {"v1"} and len(fake_hub.branches) == 3
    backbone_files = set(fake_hub.commits[0]["files"])
    assert {
        "config.json",
        "configuration_mtpf.py",
        "modeling_mtpf.py",
        "model.safetensors",
        "README.md",
    } <= backbone_files
    assert set(fake_hub.commits[1]["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        BASE_MARKER,
        "README.md",
    }
    adapter_config = json.loads(fake_hub.commits[1]["files"]["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == REPO_ID and adapter_config["revision"] == "v1"
    assert all(call["auth"] == f"Bearer {TOKEN}" for call in fake_hub.calls)
    for commit in fake_hub.commits:  # the token never lands in an uploaded file
        assert not any(TOKEN.encode() in content for content in commit["files"].values())


def test_failed_upload_says_what_was_published(trained_release, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail_repo = f"{REPO_ID}-ner"
    staged = stage_release(trained_release, HubTarget(REPO_ID), tmp_path / "stage")
    with pytest.raises(
        PublishError, match=rf"Publishing {REPO_ID}-ner failed .*already published: {REPO_ID}\."
    ) as info:
        publish(staged, HfApi(endpoint=f"http://127.0.0.1:{fake_hub.server_port}"))
    assert TOKEN not in str(info.value)


def quality_summary(tmp_path: Path, levers: dict, base_model: str = "offline:tiny-bert") -> Path:
    """A sweep summary (the shape `scripts/quality_sweep.py --summarize` writes) with one shipped recipe."""
    delta = {"mean_delta": -0.14, "se": 0.11, "n": 3, "text": "-0.14 ± 0.11 ≈"}
    recipe = {"name": "r", "levers": levers, "seeds": [0, 1, 2], "tc": delta, "shipped": True}
    recipe |= {"ner_full": {**delta, "text": "+0.31 ± 0.19 ≈"}, "ner_10": {**delta, "text": "+5.45 ± 0.45"}}
    base = {"model": base_model, "tc": 67.669, "ner_full": 75.233, "ner_10": 57.749}
    base_levers = {"release_interpolation": None, "ner_backbone_grad_scale": 1.0, "tc_batch_size": 16}
    quick = {"protocol": "quick: the test's", "base": base, "recipes": [recipe]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"quick": quick, "base_levers": base_levers}))
    return path


def test_the_card_reports_the_recipes_quality_against_the_base(trained_release, tmp_path):
    summary = quality_summary(tmp_path, {"tc_batch_size": 16, "max_ner_sentences": 200})  # the smoke run's
    push_main([str(trained_release), "--repo-id", REPO_ID, "--quality", str(summary), "--dry-run", str(tmp_path)])
    text = ModelCard.load(tmp_path / REPO_ID / "README.md").text
    assert "## Quality against the base" in text and "pre-finetuning seeds 0, 1, 2" in text
    assert "| NER with 10 % of the training data (entity F1) | 57.75 | +5.45 ± 0.45 |" in text
    assert "cover the pre-finetuning seeds only (the base is scored once" in text  # what the SE leaves out
    assert "not the teacher's build" in text


def test_the_card_counts_the_bases_noise_where_the_base_was_scored_at_several_downstream_seeds(tmp_path):
    path = quality_summary(tmp_path, {})
    summary = json.loads(path.read_text())
    summary["quick"]["base"]["ner_full_downstream_se"] = 0.18
    path.write_text(json.dumps(summary))
    text = quality_section(recipe_quality(path))
    assert "seeds and, for NER, the base's own run-to-run noise (its mean over downstream seeds)" in text


@pytest.mark.parametrize(
    ("levers", "base_model", "message"),
    [
        ({"tc_batch_size": 128}, "offline:tiny-bert", "tc_batch_size = 16, recipe 'r'"),
        ({"release_interpolation": 0.5}, "offline:tiny-bert", "release_interpolation = None"),
        # how much of the NER corpus it pseudo-labelled (configs/smoke.yaml: 200 sentences)
        ({"max_ner_sentences": 8000}, "offline:tiny-bert", "max_ner_sentences = 200, recipe 'r'"),
        ({}, "offline:minilm-l6", "backbone = 'offline:tiny-bert'"),
        # not recorded because it is at its default (1): still a difference
        ({"ner_backbone_grad_scale": 0}, "offline:tiny-bert", "ner_backbone_grad_scale = 1.0, recipe 'r'"),
        # a per-slot lever (TASK=N) the release was trained without
        ({"slot_ranks": ["tc=8"]}, "offline:tiny-bert", r"slot_ranks = None, recipe 'r' .* has \['tc=8'\]"),
    ],
)
def test_another_recipes_quality_never_reaches_the_card(trained_release, tmp_path, levers, base_model, message):
    from mtpf.quality.card import QualityReportError

    summary = quality_summary(tmp_path, levers, base_model)
    with pytest.raises(QualityReportError, match=message):
        push_main([str(trained_release), "--repo-id", REPO_ID, "--quality", str(summary), "--dry-run", str(tmp_path)])
    assert not (tmp_path / REPO_ID).exists()


def test_bad_input_fails_before_any_upload(trained_release, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    endpoint = ["--endpoint", f"http://127.0.0.1:{fake_hub.server_port}"]
    with pytest.raises(ValueError, match="Invalid repo id 'acme/bad name'"):
        push_main([str(trained_release), "--repo-id", "acme/bad name", *endpoint])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"schema": "other/2", "results": []}))
    with pytest.raises(ResultsSchemaError, match=r"unknown results schema 'other/2'; expected 'mtpf-results/1'"):
        push_main([str(trained_release), "--repo-id", REPO_ID, "--results", str(unknown), *endpoint])
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(trained_release), str(broken)], check=True)
    (broken / "adapters" / "tc" / "adapter_config.json").unlink()
    with pytest.raises(ReleaseError, match=r"adapters/tc/adapter_config\.json: missing"):
        push_main([str(broken), "--repo-id", REPO_ID, *endpoint])
    other = init_release(str(packaged_tiny_encoder()), tmp_path / "other", tpl_layers=1, r=2, lora_alpha=4)
    mixed = tmp_path / "mixed"
    subprocess.run(["cp", "-r", str(trained_release), str(mixed)], check=True)
    (mixed / "adapters" / "ner" / BASE_MARKER).write_text((other / "adapters" / "ner" / BASE_MARKER).read_text())
    with pytest.raises(ReleaseError, match=r"adapter 'ner' was made for another backbone"):
        push_main([str(mixed), "--repo-id", REPO_ID, *endpoint])
    # scores of other weights (here: of the tiny base encoder) never reach this release's model-index
    foreign = tmp_path / "foreign.json"
    save_results([conll_f1(91.0, model="offline:tiny-bert", config_hash="051e2de600e464d2")], foreign)
    with pytest.raises(ReleaseError, match=r"measured on weights with config hash \['051e2de600e464d2'\], but"):
        push_main([str(trained_release), "--repo-id", REPO_ID, "--results", str(foreign), *endpoint])
    assert fake_hub.calls == []


def test_results_schema_round_trip(results_file):
    records = load_results(results_file)
    assert json.loads(results_file.read_text())["schema"] == SCHEMA and len(records) == 4
    bad = results_file.with_name("bad.json")
    bad.write_text(
        json.dumps(
            {
                "schema": SCHEMA,
                "results": [{"model": "m", "family": "pos", "dataset": "d", "split": "t", "metric": "f1", "value": 1}],
            }
        )
    )
    with pytest.raises(ResultsSchemaError, match=r"results\[0\]\.family is 'pos'"):
        load_results(bad)


def test_results_values_must_be_numbers(tmp_path):
    bad = tmp_path / "bad.json"
    entry = {"model": "m", "family": "ner", "dataset": "d", "split": "t", "metric": "f1", "value": "high"}
    bad.write_text(json.dumps({"schema": SCHEMA, "results": [entry]}))
    with pytest.raises(ResultsSchemaError, match=r"bad\.json: results\[0\] has a value that is not a number: 'high'"):
        load_results(bad)
    bad.write_text('{"schema": "mtpf-results/1", "results": [')  # truncated by a kill or a full disk
    with pytest.raises(ResultsSchemaError, match=r"bad\.json: not a readable JSON results file"):
        load_results(bad)
