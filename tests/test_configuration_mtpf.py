import pytest
from transformers import DistilBertConfig, GPT2Config, RobertaConfig

from configuration_mtpf import MtpfConfig
from tests.conftest import tiny_bert_config


def test_default_slots_sit_on_last_layers():
    config = MtpfConfig.from_backbone(tiny_bert_config(num_hidden_layers=6), tpl_layers=2)
    assert set(config.task_slots) == {"ner", "tc"}
    assert config.task_slots["ner"]["layers"] == [4, 5]
    assert config.task_slots["tc"]["r"] == 32 and config.task_slots["tc"]["lora_alpha"] == 64


def test_round_trip_through_dict_keeps_backbone_and_slots(tmp_path):
    config = MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=1, r=4, lora_alpha=8)
    config.save_pretrained(tmp_path)
    loaded = MtpfConfig.from_pretrained(tmp_path)
    assert loaded.backbone_config.hidden_size == 32
    assert loaded.backbone_config.model_type == "bert"
    assert loaded.task_slots == config.task_slots


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        (tiny_bert_config(), r"backbone\.encoder\.layer\.(1|2)\.(attention\.self\.query|attention\.self\.key"),
        (DistilBertConfig(n_layers=3), r"backbone\.transformer\.layer\.(1|2)\.(attention\.q_lin|attention\.k_lin"),
        (RobertaConfig(num_hidden_layers=3), r"backbone\.encoder\.layer\.(1|2)\."),
    ],
)
def test_target_regex_per_family(backbone, expected):
    config = MtpfConfig.from_backbone(backbone, tpl_layers=2)
    assert expected in config.slot_target_regex("ner")


def test_mlp_role_does_not_match_attention_output():
    import re

    config = MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=1)
    regex = config.slot_target_regex("ner")
    assert re.fullmatch(regex, "backbone.encoder.layer.2.output.dense")
    assert re.fullmatch(regex, "mtpf.backbone.encoder.layer.2.intermediate.dense")
    assert not re.fullmatch(regex, "backbone.encoder.layer.2.attention.output.dense")
    assert not re.fullmatch(regex, "backbone.encoder.layer.1.output.dense")


def test_unsupported_backbone_is_named():
    with pytest.raises(ValueError, match="'gpt2' is not supported"):
        MtpfConfig.from_backbone(GPT2Config())


def test_slot_on_missing_layer_is_rejected():
    slots = {"ner": {"r": 4, "lora_alpha": 8, "target_modules": ["query"], "layers": [2, 7]}}
    with pytest.raises(ValueError, match=r"slot 'ner' names layers \[2, 7\].*layers 0\.\.2"):
        MtpfConfig(backbone_config=tiny_bert_config(), task_slots=slots)


def test_tpl_layers_beyond_depth_is_rejected():
    with pytest.raises(ValueError, match="tpl_layers=5"):
        MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=5)


def test_slot_missing_field_is_named():
    slots = {"tc": {"lora_alpha": 8, "target_modules": ["query"], "layers": [2]}}
    with pytest.raises(ValueError, match=r"slot 'tc' is missing the field\(s\) \['r'\]"):
        MtpfConfig(backbone_config=tiny_bert_config(), task_slots=slots)


def test_backbone_config_without_model_type_is_named():
    with pytest.raises(ValueError, match="backbone_config is missing the field 'model_type'"):
        MtpfConfig(backbone_config={"hidden_size": 32})


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="Unknown target module role 'ffn'"):
        MtpfConfig.from_backbone(tiny_bert_config(), target_modules=["query", "ffn"])
