import torch

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfModel, mean_pool
from mtpf.slots import activate_slot, attach_slots, backbone_parameters, slot_parameters
from tests.conftest import randomize_lora, tiny_bert_config

IDS = torch.tensor([[2, 9, 10, 11, 3], [2, 12, 13, 3, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])


def slotted_model(train_backbone: bool = True):
    torch.manual_seed(0)
    model = MtpfModel(MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=2, r=4, lora_alpha=8))
    peft_model = attach_slots(model, train_backbone=train_backbone)
    randomize_lora(peft_model)
    return peft_model.eval()


def embed(peft_model):
    return peft_model(input_ids=IDS, attention_mask=MASK).pooler_output


def test_slots_only_on_their_layers():
    peft_model = slotted_model()
    lora_layers = {name.split(".encoder.layer.")[1].split(".")[0] for name in slot_parameters(peft_model, "ner")}
    assert lora_layers == {"1", "2"}
    assert slot_parameters(peft_model, "ner").keys().isdisjoint(slot_parameters(peft_model, "tc").keys())


def test_switching_slot_changes_outputs():
    peft_model = slotted_model()
    activate_slot(peft_model, "ner")
    ner = embed(peft_model)
    activate_slot(peft_model, "tc")
    tc = embed(peft_model)
    activate_slot(peft_model, None)
    base = embed(peft_model)
    assert not torch.allclose(ner, tc) and not torch.allclose(ner, base)
    plain = peft_model.get_base_model().backbone(input_ids=IDS, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(base, torch.nn.functional.normalize(mean_pool(plain, MASK), dim=-1))
    activate_slot(peft_model, "ner")
    assert torch.equal(embed(peft_model), ner)


def test_every_slot_and_backbone_stay_trainable():
    peft_model = slotted_model()
    for task in ("ner", "tc", None):
        activate_slot(peft_model, task)
        assert all(p.requires_grad for p in peft_model.parameters())


def test_only_the_active_slot_receives_gradient():
    peft_model = slotted_model().train()
    activate_slot(peft_model, "ner")
    embed(peft_model).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in slot_parameters(peft_model, "ner").values())
    assert all(p.grad is None for p in slot_parameters(peft_model, "tc").values())
    assert (
        backbone_parameters(peft_model)["base_model.model.backbone.embeddings.word_embeddings.weight"].grad is not None
    )


def test_frozen_backbone_mode_trains_only_slots():
    peft_model = slotted_model(train_backbone=False)
    activate_slot(peft_model, "tc", train_backbone=False)
    assert not any(p.requires_grad for p in backbone_parameters(peft_model).values())
    assert all(p.requires_grad for p in slot_parameters(peft_model, "ner").values())
