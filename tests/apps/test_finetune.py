"""`mtpf finetune`: an app's adapter (NER or classification) from a release; the evaluation protocol's numbers;
loaded as a user would."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mtpf.apps import AppError, FinetuneArguments, finetune_app, read_app
from mtpf.apps.classification import ClassificationDataError, check_classes, load_classification_spec
from mtpf.apps.ner.data import check_label_sets, load_ner_dataset
from mtpf.apps.ner.train import train_ner
from mtpf.models import load_model
from mtpf.release import validate_release
from mtpf.training.downstream import DownstreamData
from tests.conftest import APP_PROTOCOL as PROTOCOL
from tests.conftest import CLASSIFIER_PROTOCOL, NER_ROOT, REPO_ROOT, run_command


def test_app_scores_what_the_evaluation_protocol_scores(app):
    release, app_dir = app
    description = read_app(app_dir)
    splits = load_ner_dataset("crossner_ai", NER_ROOT)
    data = DownstreamData("crossner_ai", splits, check_label_sets(splits, "x"))
    expected, _ = train_ner(load_model(str(release)), data, PROTOCOL, seed=1)
    assert description["scores"]["test_f1"] == expected.test_f1 > 0
    assert description["run"]["dev_curve"] == expected.dev_curve
    files = sorted(p.name for p in app_dir.iterdir())
    assert files == [
        ".mtpf-manifest.json",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "mtpf_app.json",
        "mtpf_base.json",
    ]
    adapter = json.loads((app_dir / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"] and adapter["base_model_name_or_path"].endswith("backbone")
    assert f"{expected.test_f1:.2f}" in (app_dir / "README.md").read_text()


def run_app_pipeline(release, app_dir, text: str, tmp_path) -> tuple[dict, torch.Tensor]:
    """examples/app_pipeline.py in a fresh process (transformers + PEFT only), and the same app's logits here."""
    from examples.app_pipeline import load_app

    out = tmp_path / "predictions.json"
    run_command(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "app_pipeline.py"),
            str(release / "backbone"),
            str(app_dir),
            text,
            "--output",
            str(out),
        ],
        tmp_path,
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    model, tokenizer, _ = load_app(str(release / "backbone"), str(app_dir))  # in this process
    with torch.no_grad():
        logits = model(**tokenizer([text], padding=True, return_tensors="pt")).logits
    return json.loads(out.read_text()), logits


def test_app_tags_entities_through_a_pipeline_in_a_fresh_process(app, tmp_path):
    release, app_dir = app
    text = "Deep learning was studied by Geoffrey Hinton at the University of Toronto and Google ."
    got, logits = run_app_pipeline(release, app_dir, text, tmp_path)
    assert got["task"] == "ner" and got["predictions"][0]  # the app finds entities
    assert {p["entity_group"] for p in got["predictions"][0]} <= {t[2:] for t in read_app(app_dir)["label2id"]}
    torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=0)


def test_classifier_app_labels_texts_through_a_pipeline_in_a_fresh_process(classifier_app, tmp_path):
    release, app_dir = classifier_app
    description = read_app(app_dir)
    assert description["task"] == "classification" and len(description["id2label"]) == 6  # emotion's classes
    assert description["run"]["train_texts"] == CLASSIFIER_PROTOCOL.max_train_sentences
    assert 0 <= description["scores"]["test_macro_f1"] <= 100 and 0 < description["scores"]["test_accuracy"] <= 100
    adapter = json.loads((app_dir / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"]
    assert adapter["auto_mapping"]["base_model_class"] == "MtpfForSequenceClassification"
    assert f"{description['scores']['test_accuracy']:.2f}" in (app_dir / "README.md").read_text()
    got, logits = run_app_pipeline(release, app_dir, "i feel so happy and grateful today", tmp_path)
    (prediction,) = got["predictions"][0]
    assert prediction["label"] in description["label2id"] and 0 < prediction["score"] <= 1
    assert description["id2label"][str(int(logits.argmax()))] == prediction["label"]
    torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=0)


def test_classification_data_errors_name_file_and_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nhello there,a\nbye now,b\nsee you,a\nhi,b\nyo,a\n")
    (folder / "test.jsonl").write_text('{"text": "hi", "label": "a"}\n{"text": "ok", "label": "c"}\n')
    name, splits = load_classification_spec(str(folder), tmp_path)
    assert name == "data" and len(splits["dev"]) == 1 and len(splits["train"]) == 4  # a seeded tenth became dev
    with pytest.raises(ClassificationDataError, match=r"test.jsonl:2: test label 'c' never occurs in train"):
        check_classes(splits)
    (folder / "train.csv").write_text("sentence,label\nhello,a\n")
    with pytest.raises(ClassificationDataError, match=r"train.csv:1: the header needs 'text' and 'label'"):
        load_classification_spec(str(folder), tmp_path)
    (folder / "train.csv").write_text("text,label\nhello,a\n   ,b\n")
    with pytest.raises(ClassificationDataError, match=r"train.csv:3: the text is empty"):
        load_classification_spec(str(folder), tmp_path)
    with pytest.raises(ClassificationDataError, match="neither a folder nor a task"):
        load_classification_spec("no-such-task", tmp_path)


def test_app_output_rules(app, tmp_path):
    release, app_dir = app
    with pytest.raises(AppError, match="an app is already there; pass --overwrite"):
        finetune_app(FinetuneArguments(release, "crossner_ai", app_dir, data_root=NER_ROOT), PROTOCOL)
    with pytest.raises(AppError, match=r"not empty and not an app"):
        finetune_app(FinetuneArguments(release, "crossner_ai", release, data_root=NER_ROOT), PROTOCOL)
    with pytest.raises(AppError, match=r"Unknown app kind 'qa'"):
        finetune_app(FinetuneArguments(release, "crossner_ai", tmp_path / "x", task="qa"), PROTOCOL)
    with pytest.raises(AppError, match="not a release folder"):
        finetune_app(FinetuneArguments(tmp_path, "crossner_ai", tmp_path / "x"), PROTOCOL)
    assert validate_release(release) == ["ner", "tc"]  # the release is untouched


def test_an_app_is_published_as_its_own_peft_repo_on_the_backbone_repo(app, tmp_path):
    import push_to_hub

    _, app_dir = app
    with pytest.raises(SystemExit, match="--base-repo-id"):
        push_to_hub.main([str(app_dir), "--repo-id", "org/ai-tagger", "--dry-run", str(tmp_path)])
    staged = push_to_hub.main(
        [str(app_dir), "--repo-id", "org/ai-tagger", "--base_repo_id", "org/mtpf-minilm", "--dry-run", str(tmp_path)]
    )
    assert staged == ["org/ai-tagger"]
    folder = tmp_path / "org" / "ai-tagger"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "org/mtpf-minilm" and adapter["modules_to_save"] == ["classifier"]
    card = (folder / "README.md").read_text()
    assert '"org/mtpf-minilm"' in card and '"org/ai-tagger"' in card and "BACKBONE" not in card
    assert (folder / "adapter_model.safetensors").read_bytes() == (app_dir / "adapter_model.safetensors").read_bytes()
