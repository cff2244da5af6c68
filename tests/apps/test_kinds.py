"""The app-kind registry: every kind in one entry, an unknown kind an error that lists the registered ones (no silent
fallback to classification anywhere)."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from mtpf.apps import APP_KINDS, AppError, get_app_kind, read_app, register_app_kind
from mtpf.apps.kinds import kind_of_endpoint
from tests.conftest import REPO_ROOT, mtpf_command


def test_the_built_in_kinds_and_their_endpoints():
    assert sorted(APP_KINDS) == ["classification", "ner"]
    assert kind_of_endpoint("ner").name == "ner" and kind_of_endpoint("classify").name == "classification"
    assert kind_of_endpoint("embeddings") is None
    assert get_app_kind("ner").auto_class == "AutoModelForTokenClassification"
    assert get_app_kind("classification").head_model_class().__name__ == "MtpfForSequenceClassification"


def test_an_unknown_kind_is_an_error_listing_the_registered_ones(tmp_path):
    with pytest.raises(AppError, match=r"Unknown app kind 'qa'; registered kinds: \['classification', 'ner'\]"):
        get_app_kind("qa")
    (tmp_path / "mtpf_app.json").write_text(json.dumps({"task": "qa", "id2label": {}}))
    with pytest.raises(AppError, match=r"expected a task in \['classification', 'ner'\]"):
        read_app(tmp_path)
    result = subprocess.run(
        mtpf_command("finetune", "REL", "--task", "qa", "--data", "x", "--output", str(tmp_path / "app")),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "Unknown app kind 'qa'" in result.stderr and "Traceback" not in result.stderr


def test_a_kind_cannot_take_a_name_or_an_endpoint_already_served():
    ner = get_app_kind("ner")
    with pytest.raises(ValueError, match="already registered"):
        register_app_kind(dataclasses.replace(ner, endpoint="tag"))
    with pytest.raises(ValueError, match="endpoint /v1/classify is already taken"):
        register_app_kind(dataclasses.replace(ner, name="other", endpoint="classify"))
    with pytest.raises(ValueError, match="endpoint /v1/embeddings is already taken"):
        register_app_kind(dataclasses.replace(ner, name="other", endpoint="embeddings"))
    assert sorted(APP_KINDS) == ["classification", "ner"]
