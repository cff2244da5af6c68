"""Every local NER dataset reads with the counts its SOURCE.md states (sentences, tokens, entities)."""

from __future__ import annotations

import pytest

from mtpf.analysis.perturbation import entity_spans
from mtpf.apps.ner.data import (
    LOCAL_NER_DATASETS,
    NerDataError,
    check_label_sets,
    load_ner_dataset,
    load_user_ner_data,
)
from mtpf.data.conll import read_conll
from tests.conftest import SHARED_DIR

NER_ROOT = SHARED_DIR / "data" / "ner"
# (sentences, tokens, entities) per file, copied from each dataset's SOURCE.md
SOURCE_COUNTS = {
    "conll2003": {"train": (14_041, 203_621, 23_499), "dev": (3_250, 51_362, 5_942), "test": (3_453, 46_435, 5_648)},
    "ontonotes5": {
        "train": (59_924, 1_088_503, 81_829),
        "dev": (8_528, 147_724, 11_066),
        "test": (8_262, 152_728, 11_257),
    },
    "mit_restaurant": {"train": (7_660, 70_525, 15_363), "test": (1_521, 14_256, 3_151)},
    "jnlpba": {"train": (16_795, 445_261, 46_750), "dev": (1_739, 47_461, 4_551), "test": (3_856, 101_039, 8_662)},
    "crossner_ai": {"train": (100, 3_782, 532), "dev": (350, 10_919, 1_549), "test": (431, 12_991, 1_809)},
    "crossner_literature": {"train": (100, 3_782, 541), "dev": (400, 14_503, 2_130), "test": (416, 16_157, 2_266)},
    "crossner_music": {"train": (100, 3_909, 648), "dev": (380, 15_591, 2_679), "test": (465, 19_605, 3_336)},
    "crossner_politics": {"train": (200, 8_384, 1_304), "dev": (541, 24_624, 3_482), "test": (651, 27_585, 4_209)},
    "crossner_science": {"train": (200, 7_100, 1_075), "dev": (450, 16_139, 2_538), "test": (543, 19_487, 3_089)},
}


def counts(sentences) -> tuple[int, int, int]:
    return len(sentences), sum(len(s.tokens) for s in sentences), sum(len(entity_spans(s.tags)) for s in sentences)


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_counts_match_source(name):
    spec = LOCAL_NER_DATASETS[name]
    for split, expected in SOURCE_COUNTS[name].items():
        sentences = read_conll(NER_ROOT / (spec.folder or name) / spec.files[split], spec.fmt)
        assert counts(sentences) == expected, (name, split)


def test_every_local_dataset_is_covered():
    assert set(LOCAL_NER_DATASETS) == set(SOURCE_COUNTS)


def test_missing_dev_is_a_seeded_tenth_of_train():
    splits = load_ner_dataset("mit_restaurant", NER_ROOT)
    assert len(splits["dev"]) == 766 and len(splits["train"]) == 7_660 - 766
    again = load_ner_dataset("mit_restaurant", NER_ROOT)
    assert [s.tokens for s in again["dev"]] == [s.tokens for s in splits["dev"]]
    labels = check_label_sets(splits, "mit_restaurant")
    assert labels[0] == "O" and len(labels) == 1 + 2 * 8


def test_user_folder_and_bad_input(tmp_path):
    (tmp_path / "train.txt").write_text("Paris B-LOC\nis O\n\nBob B-PER\n\n" * 10, encoding="utf-8")
    (tmp_path / "test.txt").write_text("Rome B-LOC\n\nAcme B-ORG\n", encoding="utf-8")
    with pytest.raises(
        NerDataError, match=r"test\.txt:3: test tag\(s\) \['B-ORG'\] name an entity type never seen in train"
    ):
        check_label_sets(load_user_ner_data(f"mine={tmp_path}")[1], "mine")
    (tmp_path / "test.txt").write_text("", encoding="utf-8")
    with pytest.raises(NerDataError, match="the test split is missing or empty"):
        load_user_ner_data(f"mine={tmp_path}")
    with pytest.raises(NerDataError, match="takes NAME=DIR"):
        load_user_ner_data(str(tmp_path))


def test_datasets_library_ner_data_with_classlabel_tags(tmp_path):
    """`hf://ID` goes through `datasets.load_dataset`; a local folder of parquet splits stands in for a Hub id."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    from mtpf.apps.ner.data import load_hub_ner_data

    tags = ClassLabel(names=["O", "B-PER", "I-PER"])
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(tags)})
    rows = {"tokens": [["Ada", "Lovelace", "wrote"]] * 20, "ner_tags": [[1, 2, 0]] * 19 + [[2, 2, 0]]}
    for split in ("train", "test"):
        Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    name, splits = load_hub_ner_data(f"hf://{tmp_path}")
    assert name == tmp_path.name and set(splits) == {"train", "dev", "test"}
    assert splits["test"][0].tags == ["B-PER", "I-PER", "O"]
    assert splits["test"][19].tags == ["B-PER", "I-PER", "O"]  # I- after O repaired to B- (and logged)
    with pytest.raises(NerDataError, match="cannot load the dataset"):
        load_hub_ner_data("hf://no-such-org/no-such-dataset")


def test_a_training_set_without_entities_is_refused_naming_the_file(tmp_path):
    from mtpf.apps.ner.data import NerDataError, check_label_sets, load_ner_spec

    folder = tmp_path / "all-o"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.txt").write_text("Alan O\nTuring O\n\nworked O\n")
    name, splits = load_ner_spec(str(folder))
    with pytest.raises(NerDataError, match=r"all-o/train\.txt: the training set of all-o has no entity at all"):
        check_label_sets(splits, name)
