import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from mtpf.data.pairs import load_pair_source
from mtpf.data.steps import MultiTaskStepDataset, NerBatches, TaskSchedule, TcBatches
from mtpf.weights import tiny_encoder_dir
from tests.conftest import SHARED_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_encoder_dir())


def test_schedules():
    both = TaskSchedule(("tc", "ner"))
    assert [both.tasks_at(s) for s in range(2)] == [("ner", "tc"), ("ner", "tc")]
    assert both.task_index("tc", 5) == 5
    alternate = TaskSchedule(("ner", "tc"), "alternate", "1:3")
    assert [alternate.tasks_at(s) for s in range(5)] == [("ner",), ("tc",), ("tc",), ("tc",), ("ner",)]
    assert [alternate.task_index("tc", s) for s in range(6)] == [0, 0, 1, 2, 3, 3]
    assert alternate.task_index("ner", 5) == 2
    with pytest.raises(ValueError, match="task_schedule"):
        TaskSchedule(("ner",), "random")


def test_ranks_split_the_same_global_tc_batch(tokenizer):
    source = load_pair_source(str(SHARED_DIR / "data/pairs/stsb"))
    single = TcBatches([source], tokenizer, batch_size=8, seed=1)
    ranks = [TcBatches([source], tokenizer, batch_size=8, seed=1, rank=r, world_size=2) for r in range(2)]
    for step in (0, 3, single.sampler.epoch_length(0) + 1):  # also across an epoch boundary
        whole = single(step)["input_ids"]
        parts = [r(step)["input_ids"] for r in ranks]
        first_anchor = tokenizer.decode(parts[0][0], skip_special_tokens=True)
        second_anchor = tokenizer.decode(parts[1][0], skip_special_tokens=True)
        assert first_anchor == tokenizer.decode(whole[0], skip_special_tokens=True)
        assert second_anchor == tokenizer.decode(whole[4], skip_special_tokens=True)
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        TcBatches([source], tokenizer, batch_size=8, rank=0, world_size=3)(0)


def test_ner_batches_label_first_subtokens(tokenizer):
    dataset = Dataset.from_dict({"words": [["Dominick's", "owns", "Safeway"]] * 4, "labels": [[3, 1, -1]] * 4})
    batch = NerBatches(dataset, tokenizer, batch_size=2)(0)
    word_ids = tokenizer(["Dominick's", "owns", "Safeway"], is_split_into_words=True).word_ids()
    expected = []
    for position, word in enumerate(word_ids):
        first = word is not None and (position == 0 or word_ids[position - 1] != word)
        expected.append({0: 3, 1: 1, 2: -100}[word] if first else -100)
    assert batch["labels"][0].tolist()[: len(expected)] == expected


def test_step_dataset_needs_batches_for_each_task():
    with pytest.raises(ValueError, match=r"No batches for the task\(s\) \['tc'\]"):
        MultiTaskStepDataset(3, TaskSchedule(("ner", "tc")), {"ner": None})
