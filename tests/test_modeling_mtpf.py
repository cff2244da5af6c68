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
