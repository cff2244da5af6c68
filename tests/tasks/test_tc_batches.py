"""TC batches: a pure function of (seed, step); ranks take their slices of one global batch."""

import pytest
from transformers import AutoTokenizer

from mtpf.data.pairs import load_pair_source
from mtpf.tasks.base import TaskContext
from mtpf.tasks.tc.batches import TcBatches
from mtpf.weights import tiny_encoder_dir
from tests.conftest import SHARED_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_encoder_dir())


def test_ranks_split_the_same_global_tc_batch(tokenizer):
    source = load_pair_source(str(SHARED_DIR / "data/pairs/stsb"))
    single = TcBatches([source], TaskContext(tokenizer, seed=1), batch_size=8)
    ranks = [TcBatches([source], TaskContext(tokenizer, seed=1, rank=r, world_size=2), batch_size=8) for r in range(2)]
    for step in (0, 3, single.sampler.epoch_length(0) + 1):  # also across an epoch boundary
        whole = single(step)["input_ids"]
        parts = [r(step)["input_ids"] for r in ranks]
        first_anchor = tokenizer.decode(parts[0][0], skip_special_tokens=True)
        second_anchor = tokenizer.decode(parts[1][0], skip_special_tokens=True)
        assert first_anchor == tokenizer.decode(whole[0], skip_special_tokens=True)
        assert second_anchor == tokenizer.decode(whole[4], skip_special_tokens=True)
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        TcBatches([source], TaskContext(tokenizer, rank=0, world_size=3), batch_size=8)(0)
