import json

import numpy as np
import pytest

from mtpf.analysis.clusters import (
    ClusterArguments,
    cluster_agreement,
    cluster_quality,
    entity_type,
    ner_view,
    word_cluster_quality,
)
from mtpf.data.conll import TaggedSentence
from tests.conftest import REPO_ROOT, SHARED_DIR, TINY, run_command


def test_entity_types_and_agreement_bounds():
    assert [entity_type(t) for t in ["O", "B-PER", "I-ORG", "B-DNA_FAMILY"]] == ["O", "PER", "ORG", "DNA_FAMILY"]
    types = ["O", "O", "PER", "PER", "LOC", "LOC"]
    perfect = cluster_agreement(np.array([0, 0, 1, 1, 2, 2]), types)
    assert perfect["nmi"] == 1.0 and perfect["entity_purity"] == 1.0 and perfect["entity_words"] == 4
    # every entity word sits in an O-majority cluster: k-means would type none of them
    lost = cluster_agreement(np.array([0, 0, 0, 1, 1, 1]), ["O", "O", "PER", "O", "O", "LOC"])
    assert lost["entity_purity"] == 0.0
    with pytest.raises(ValueError, match="3 cluster ids for 2 words"):
        cluster_agreement(np.array([0, 1, 2]), ["O", "O"])


def test_word_clusters_of_a_real_tokenizer_cover_every_word():
    encoder, tokenizer = ner_view(TINY)
    sentences = [TaggedSentence(["Anna", "visited", "Paris", "."], ["B-PER", "O", "B-LOC", "O"])] * 3
    quality = word_cluster_quality([(encoder, tokenizer)], sentences, num_clusters=3)
    assert quality["words"] == 12 and quality["entity_words"] == 6 and 0.0 <= quality["entity_purity"] <= 1.0
    joint = word_cluster_quality([(encoder, tokenizer)] * 2, sentences, num_clusters=3)  # a teacher + co-teacher
    assert joint["words"] == 12 and joint["entity_words"] == 6


def test_release_is_measured_with_its_ner_slot(slotted_release):
    encoder, _ = ner_view(str(slotted_release))
    assert encoder.active_adapter == "ner" and not encoder.training


def test_clusters_cli_writes_one_entry_per_model_and_dataset(tmp_path):
    roots = ["--ner_data_root", str(SHARED_DIR / "data" / "ner")]
    command = ["python", "-m", "mtpf", "clusters", "--output", str(tmp_path), "--models", f"tiny={TINY}"]
    run_command([*command, "--datasets", "crossner", "--sentences", "20", "--num_clusters", "8", *roots], REPO_ROOT)
    payload = json.loads((tmp_path / "cluster_quality.json").read_text())
    assert payload["settings"]["num_clusters"] == 8 and list(payload["models"]) == ["tiny"]
    assert payload["settings"]["split"] == "test"
    assert set(payload["models"]["tiny"]) == {"crossner"} and payload["models"]["tiny"]["crossner"]["words"] > 20
    purity = payload["models"]["tiny"]["crossner"]["entity_purity"]
    assert f"| `tiny` | {purity:.3f} | {purity:.3f} |" in (tmp_path / "cluster_quality.md").read_text()


def test_clusters_cli_takes_a_split_and_encoders_side_by_side(tmp_path):
    roots = ["--ner_data_root", str(SHARED_DIR / "data" / "ner")]
    command = ["python", "-m", "mtpf", "clusters", "--output", str(tmp_path), "--models", f"both={TINY}+{TINY}"]
    run_command(
        [*command, "--datasets", "crossner", "--split", "train", "--sentences", "20", "--num_clusters", "8", *roots],
        REPO_ROOT,
    )
    payload = json.loads((tmp_path / "cluster_quality.json").read_text())
    assert payload["settings"]["split"] == "train" and payload["models"]["both"]["crossner"]["words"] > 20
    assert "seeded train sentences" in (tmp_path / "cluster_quality.md").read_text()
    never = str(tmp_path / "never")
    wrong = ClusterArguments(output=never, models=[TINY], datasets=["crossner"], split="nope", ner_data_root=roots[1])
    with pytest.raises(ValueError, match="--split nope: crossner has the splits"):
        cluster_quality(wrong)
