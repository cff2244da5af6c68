"""`mtpf finetune`: an app's adapter from a release; the evaluation protocol's numbers; loaded as a user would."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mtpf.apps import AppError, finetune_app, read_app
from mtpf.evaluation.ner import train_ner
from mtpf.evaluation.ner_data import check_label_sets, load_ner_dataset
from mtpf.models import load_model
from mtpf.release import validate_release
from tests.conftest import APP_PROTOCOL as PROTOCOL
from tests.conftest import NER_ROOT, REPO_ROOT, run_command


def test_app_scores_what_the_evaluation_protocol_scores(app):
    release, app_dir = app
    description = read_app(app_dir)
    splits = load_ner_dataset("crossner_ai", NER_ROOT)
    expected, _ = train_ner(load_model(str(release)), "crossner_ai", splits, check_label_sets(splits, "x"),
                            PROTOCOL, seed=1)  # fmt: skip
    assert description["scores"]["test_f1"] == expected.test_f1 > 0
    assert description["run"]["dev_curve"] == expected.dev_curve
    files = sorted(p.name for p in app_dir.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "mtpf_app.json", "mtpf_base.json"]
    adapter = json.loads((app_dir / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"] and adapter["base_model_name_or_path"].endswith("backbone")
    assert f"{expected.test_f1:.2f}" in (app_dir / "README.md").read_text()


def test_app_tags_entities_through_a_pipeline_in_a_fresh_process(app, tmp_path):
    from examples.app_ner_pipeline import load_app

    release, app_dir = app
    out = tmp_path / "entities.json"
    text = "Deep learning was studied by Geoffrey Hinton at the University of Toronto and Google ."
    result = run_command([sys.executable, str(REPO_ROOT / "examples" / "app_ner_pipeline.py"),
                          str(release / "backbone"), str(app_dir), text, "--output", str(out)], tmp_path,
                         HF_MODULES_CACHE=str(tmp_path / "modules"))  # fmt: skip
    got = json.loads(out.read_text())
    assert got["entities"][0], result.stdout  # the app finds entities
    model, tokenizer = load_app(str(release / "backbone"), str(app_dir))  # in this process
    with torch.no_grad():
        logits = model(**tokenizer([text], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-5, rtol=0)


def test_app_output_rules(app, tmp_path):
    release, app_dir = app
    with pytest.raises(AppError, match="an app is already there; pass --overwrite"):
        finetune_app(release, "ner", "crossner_ai", app_dir, PROTOCOL, data_root=NER_ROOT)
    with pytest.raises(AppError, match=r"not empty and not an app"):
        finetune_app(release, "ner", "crossner_ai", release, PROTOCOL, data_root=NER_ROOT)
    with pytest.raises(AppError, match=r"--task 'qa'"):
        finetune_app(release, "qa", "crossner_ai", tmp_path / "x", PROTOCOL)
    with pytest.raises(AppError, match="not a release folder"):
        finetune_app(tmp_path, "ner", "crossner_ai", tmp_path / "x", PROTOCOL)
    assert validate_release(release) == ["ner", "tc"]  # the release is untouched
