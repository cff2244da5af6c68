import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DistilBertConfig,
)

import mtpf  # noqa: F401  (registers the Auto classes)
from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfForSequenceClassification, MtpfForTokenClassification, MtpfModel, mean_pool
from tests.conftest import tiny_bert_config


def tiny_model(**overrides) -> MtpfModel:
    torch.manual_seed(0)
    return MtpfModel(MtpfConfig.from_backbone(tiny_bert_config(**overrides), r=4, lora_alpha=8)).eval()


def test_mean_pool_ignores_padding():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(tokens, mask), torch.tensor([[2.0, 3.0]]))


def test_sentence_embedding_does_not_depend_on_padding():
    model = tiny_model()
    ids = torch.tensor([[2, 7, 8, 3]])
    short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    padded_ids = torch.tensor([[2, 7, 8, 3, 0, 0]])
    padded = model(input_ids=padded_ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).pooler_output
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_outputs_equal_the_wrapped_backbone():
    model = tiny_model()
    ids = torch.tensor([[2, 9, 10, 11, 3]])
    expected = model.backbone(input_ids=ids).last_hidden_state
    assert torch.equal(model(input_ids=ids).last_hidden_state, expected)


def test_distilbert_backbone_runs_without_token_types():
    config = MtpfConfig.from_backbone(DistilBertConfig(n_layers=2, dim=32, hidden_dim=64, n_heads=2, vocab_size=50))
    model = MtpfModel(config).eval()
    ids = torch.tensor([[1, 5, 6, 2]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    assert out.pooler_output.shape == (1, 32)


@pytest.mark.parametrize(
    ("auto_class", "model_class"),
    [
        (AutoModel, MtpfModel),
        (AutoModelForTokenClassification, MtpfForTokenClassification),
        (AutoModelForSequenceClassification, MtpfForSequenceClassification),
    ],
)
def test_save_load_keeps_every_weight(tmp_path, auto_class, model_class):
    """Guards against custom classes being silently re-initialised after loading (transformers #46620)."""
    torch.manual_seed(1)
    config = MtpfConfig.from_backbone(tiny_bert_config(), r=4, lora_alpha=8)
    config.num_labels = 3
    model = model_class(config).eval()
    model.save_pretrained(tmp_path)
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == model_class.__name__
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key


def test_heads_reuse_a_saved_backbone(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    head_model = MtpfForTokenClassification.from_pretrained(tmp_path, num_labels=5).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(head_model.state_dict()[key], value), key
    ids = torch.tensor([[2, 9, 10, 3]])
    labels = torch.tensor([[-100, 1, 4, -100]])
    out = head_model(input_ids=ids, labels=labels)
    assert out.logits.shape == (1, 4, 5) and out.loss.item() > 0


def test_missing_backbone_config_is_named():
    with pytest.raises(ValueError, match="MtpfConfig has no backbone_config"):
        MtpfModel(MtpfConfig())


def test_corrupted_weights_name_the_folder(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(OSError, match=str(tmp_path)):
        MtpfModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_pooler_output_is_the_configured_sentence_embedding(pooling):
    """pooler_output = sentence-transformers' Pooling(mode) -> Normalize, computed independently here."""
    model = tiny_model()
    model.config.pooling = pooling
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    tokens = model(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.unsqueeze(-1).bool()
    pooled = {
        "mean": (tokens * keep).sum(1) / keep.sum(1),
        "cls": tokens[:, 0],
        "max": tokens.masked_fill(~keep, -1e9).max(1).values,
    }[pooling]
    expected = pooled / pooled.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).pooler_output, expected)
    model.config.normalize = False
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).pooler_output, pooled)


def test_encode_equals_one_forward_in_the_callers_order(tiny_tokenizer):
    model = tiny_model()
    texts = ["john smith moved to paris in 2019 .", "it floods .", "the river floods every spring ."]
    batch = tiny_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).pooler_output
    got = model.encode(texts, tiny_tokenizer, batch_size=2)  # length-sorted batches, returned in order
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.encode(texts[0], tiny_tokenizer).shape == (1, model.config.hidden_size)


def test_encode_truncates_at_max_seq_length(tiny_tokenizer):
    model = tiny_model()
    text = "the river floods every spring and the city is new york"
    model.config.max_seq_length = 4  # [CLS] the river [SEP]
    expected = model.encode("the river", tiny_tokenizer)
    torch.testing.assert_close(model.encode(text, tiny_tokenizer), expected)
    model.config.max_seq_length = None
    assert not torch.allclose(model.encode(text, tiny_tokenizer), expected)
    assert model.sentence_max_length(tiny_tokenizer) == model.config.backbone_config.max_position_embeddings


def test_bad_sentence_embedding_settings_are_named():
    with pytest.raises(ValueError, match="pooling must be one of"):
        MtpfConfig.from_backbone(tiny_bert_config(), sentence_embedding={"pooling": "weightedmean"})
    with pytest.raises(ValueError, match="max_seq_length"):
        MtpfConfig.from_backbone(tiny_bert_config(), sentence_embedding={"max_seq_length": 0})


def test_head_classes_encode_sentences_like_the_encoder(tiny_tokenizer, tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    head = MtpfForSequenceClassification.from_pretrained(tmp_path, num_labels=3).eval()
    texts = ["john smith moved to paris .", "the river floods every spring ."]
    torch.testing.assert_close(head.encode(texts, tiny_tokenizer), model.encode(texts, tiny_tokenizer))
