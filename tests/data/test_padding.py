"""Length-sorted chunks: fewer padded positions, the same embeddings, loss and gradients as one padded forward."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfModel
from mtpf.data.padding import embed_by_length, length_sorted_chunks, restore_order, trim_padding
from mtpf.losses.cached_info_nce import CachedInfoNCE
from mtpf.losses.info_nce import InfoNCELoss
from tests.conftest import tiny_bert_config


def ragged_batch(rows: int = 12, width: int = 16) -> dict[str, torch.Tensor]:
    """Right-padded rows of lengths 2..width, shuffled."""
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, width + 1, (rows,), generator=generator)
    lengths[0] = width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids = torch.randint(5, 40, (rows, width), generator=generator) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def encoder() -> MtpfModel:
    torch.manual_seed(0)
    config = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MtpfModel(MtpfConfig.from_backbone(config)).train()


def test_chunks_are_sorted_trimmed_and_cover_every_row_once():
    batch = ragged_batch()
    chunks, order = length_sorted_chunks(batch, 4)
    assert sorted(order.tolist()) == list(range(12))
    lengths = [int(chunk["attention_mask"].sum(1).max()) for chunk in chunks]
    assert lengths == sorted(lengths)
    for chunk, length in zip(chunks, lengths):
        assert all(v.shape[1] == length for v in chunk.values())  # each padded only to its own longest
    padded = sum(chunk["attention_mask"].numel() for chunk in chunks)
    assert padded < batch["attention_mask"].numel()
    rows = torch.cat([chunk["input_ids"][:, :1] for chunk in chunks])
    assert torch.equal(restore_order(rows, order), batch["input_ids"][:, :1])


def test_left_padding_is_not_trimmed():
    batch = {k: v.flip(1) for k, v in ragged_batch().items()}
    assert torch.equal(trim_padding(batch)["attention_mask"], batch["attention_mask"])
    with pytest.raises(ValueError, match="at least 1"):
        length_sorted_chunks(batch, 0)


def test_chunked_embedding_gives_the_same_loss_and_gradients():
    batch, loss_fn = ragged_batch(), InfoNCELoss(0.05)
    results = []
    for size in (0, 5):
        model = encoder()
        embeddings = embed_by_length(lambda f, m=model: m(**f).pooler_output, batch, size)
        loss = loss_fn(embeddings[:6], embeddings[6:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (chunked_loss, chunked) = results
    torch.testing.assert_close(chunked_loss, plain_loss, atol=1e-5, rtol=0)
    assert chunked.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_length_sorted_gradient_cache_equals_the_plain_loss():
    batch, loss_fn = ragged_batch(), InfoNCELoss(0.05)
    model = encoder()
    embeddings = model(**batch).pooler_output
    expected_loss = loss_fn(embeddings[:6], embeddings[6:])
    expected_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    cached = CachedInfoNCE(loss_fn, mini_batch_size=5, sort_by_length=True)
    step = SimpleNamespace(
        forward=lambda f: model(**f).pooler_output, backward=lambda t: t.backward(), no_sync=contextlib.nullcontext
    )
    loss = cached(step, batch, num_pairs=6)
    torch.testing.assert_close(loss, expected_loss.detach(), atol=1e-5, rtol=0)
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-4, msg=name)
