import contextlib
from types import SimpleNamespace

import torch

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfModel
from mtpf.losses.cached_info_nce import CachedInfoNCE, RngState
from mtpf.losses.info_nce import InfoNCELoss
from tests.conftest import tiny_bert_config


def tiny_encoder(dropout: float) -> MtpfModel:
    torch.manual_seed(0)
    config = tiny_bert_config(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return MtpfModel(MtpfConfig.from_backbone(config)).train()


def texts(num_pairs: int = 6, length: int = 7):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 40, (2 * num_pairs, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cached_equals_uncached_loss_and_gradients():
    batch = texts()
    loss_fn = InfoNCELoss(0.05)
    model = tiny_encoder(dropout=0.0)
    embeddings = model(**batch).pooler_output
    expected_loss = loss_fn(embeddings[:6], embeddings[6:])
    expected_loss.backward()
    expected = grads(model)

    model.zero_grad(set_to_none=True)
    cached = CachedInfoNCE(loss_fn, mini_batch_size=5)  # chunks cross the anchor/positive boundary on purpose
    step = SimpleNamespace(
        forward=lambda f: model(**f).pooler_output, backward=lambda t: t.backward(), no_sync=contextlib.nullcontext
    )
    loss = cached(step, batch, num_pairs=6)
    torch.testing.assert_close(loss, expected_loss.detach(), atol=1e-5, rtol=0)
    got = grads(model)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dropout_is_replayed_in_the_second_pass():
    model = tiny_encoder(dropout=0.3)
    batch = {k: v[:4] for k, v in texts().items()}
    state = RngState(list(batch.values()))
    first = model(**batch).pooler_output
    model(**batch)  # consumes randomness
    with state.replay():
        replayed = model(**batch).pooler_output
    assert not torch.equal(first, model(**batch).pooler_output)
    torch.testing.assert_close(first, replayed)
