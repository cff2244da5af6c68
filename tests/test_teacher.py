import json

import pytest
import torch

from mtpf.pseudo_labels import load_teacher
from mtpf.teacher import TeacherArguments, build_teacher, parse_conll_spec
from tests.conftest import SHARED_DIR

PRETRAIN = SHARED_DIR / "data/ner_pretrain"


def test_spec_parsing():
    path, fmt = parse_conll_spec("x/train.txt#scheme=iob1,token_prefix=en:")
    assert path == "x/train.txt" and fmt.scheme == "iob1" and fmt.token_prefix == "en:"
    with pytest.raises(ValueError, match="unknown option 'prefix'"):
        parse_conll_spec("x.txt#prefix=en:")


def test_builds_a_teacher_folder_the_pseudo_labeller_loads(tmp_path):
    args = TeacherArguments(
        base="offline:tiny-bert",
        output=str(tmp_path / "teacher"),
        train_files=[
            f"{PRETRAIN}/wikiann_en/train.txt#token_prefix=en:",
            f"{PRETRAIN}/wikigold/wikigold.conll.txt#scheme=iob1",
        ],
        dev_file=f"{PRETRAIN}/wikiann_en/dev.txt#token_prefix=en:",
        max_train_sentences=64,
        max_dev_sentences=32,
        batch_size=16,
    )
    folder = build_teacher(args)
    info = json.loads((folder / "teacher_info.json").read_text())
    assert info["labels"] == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]
    assert info["train_sentences"] == 64 and 0.0 <= info["dev_f1"] <= 1.0
    assert info["learning_rate"] == args.learning_rate and info["epochs"] == args.epochs  # how it was built
    assert info["built_with"]["torch_threads"] == torch.get_num_threads()  # what else shapes the weights
    assert not (folder / "checkpoints").exists()
    model, tokenizer = load_teacher(str(folder))
    assert tokenizer.is_fast and model.config.hidden_size == 32
