"""Fused LoRA: the same outputs and gradients as PEFT's LoRA in training, the same outputs from cached merged weights in
inference, PEFT's own path everywhere else."""

import torch
from peft import PeftModel

from configuration_mtpf import MtpfConfig
from modeling_mtpf import MtpfModel
from mtpf.fused_lora import FusedLoraLinear, set_weight_cache
from mtpf.slots import activate_slot, attach_slots
from tests.conftest import randomize_lora, tiny_bert_config

IDS = torch.tensor([[2, 9, 10, 11, 3], [2, 12, 13, 3, 0], [2, 14, 3, 0, 0]])
MASK = (IDS != 0).long()
PROBE = torch.randn(3, 32, generator=torch.Generator().manual_seed(5))


def slotted(fused: bool, train_backbone: bool = True, dropout: float = 0.0) -> PeftModel:
    torch.manual_seed(0)
    config = MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=2, r=4, lora_alpha=8, lora_dropout=dropout)
    model = attach_slots(MtpfModel(config), train_backbone=train_backbone, fused=fused)
    torch.manual_seed(1)
    randomize_lora(model)
    return model


def loss_and_grads(model: PeftModel, slot: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    activate_slot(model, slot)
    output = model(input_ids=IDS, attention_mask=MASK).last_hidden_state[:, 0]
    loss = (output * PROBE).sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and "key.base_layer.bias" not in n}
    return loss.detach(), grads  # a key bias has no effect on attention: its gradient is rounding noise


def fused_layers(model: PeftModel) -> list[FusedLoraLinear]:
    return [m for m in model.modules() if isinstance(m, FusedLoraLinear)]


def test_fused_training_step_equals_peft_lora():
    for slot in ("ner", "tc"):
        plain_loss, plain = loss_and_grads(slotted(fused=False).train(), slot)
        fused_model = slotted(fused=True).train()
        assert fused_layers(fused_model)
        fused_loss, fused = loss_and_grads(fused_model, slot)
        torch.testing.assert_close(fused_loss, plain_loss, atol=1e-5, rtol=1e-5)
        assert fused.keys() == plain.keys()
        assert any(".lora_A." in n for n in fused) and any(".base_layer.weight" in n for n in fused)
        for name in plain:
            torch.testing.assert_close(fused[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_what_is_fused_and_what_runs_peft():
    model = slotted(fused=True).eval()
    layer = fused_layers(model)[0]
    assert layer._fusable_adapter({}) is None  # eval mode with gradients: PEFT's path
    with torch.no_grad():
        assert layer._fusable_adapter({}) is None  # inference without the opt-in cache: PEFT's path
        set_weight_cache(model, 1)
        assert layer._fusable_adapter({}) == "ner"  # inference: the cached merged weight
        assert layer._fusable_adapter({"adapter_names": ["ner"]}) is None
    model.train()
    assert layer._fusable_adapter({}) == "ner"
    assert layer._fusable_adapter({"adapter_names": ["ner"]}) is None
    activate_slot(model, None)
    assert layer._fusable_adapter({}) is None
    assert fused_layers(slotted(fused=True, dropout=0.1).train())[0]._fusable_adapter({}) is None


def hidden(model: PeftModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).last_hidden_state


def test_inference_with_cached_merged_weights_equals_peft_lora():
    plain, fused = slotted(fused=False).eval(), slotted(fused=True).eval()
    set_weight_cache(fused, 2)
    layer = fused_layers(fused)[0]
    for slot in ("ner", "tc", "ner", "tc"):  # switching back and forth, the second time from the cache
        activate_slot(plain, slot)
        activate_slot(fused, slot)
        torch.testing.assert_close(hidden(fused), hidden(plain), atol=1e-5, rtol=1e-5)
    assert list(layer._weight_cache) == ["ner", "tc"]
    with torch.inference_mode():  # as `mtpf serve` runs: the cache still serves a later no_grad call
        torch.testing.assert_close(fused(input_ids=IDS, attention_mask=MASK).last_hidden_state, hidden(plain))
    torch.testing.assert_close(hidden(fused), hidden(plain), atol=1e-5, rtol=1e-5)


def test_the_cache_follows_weight_changes_and_its_size():
    plain, fused = slotted(fused=False).eval(), slotted(fused=True).eval()
    set_weight_cache(fused, 1)
    hidden(fused)  # forms the ner slot's merged weights
    for model in (plain, fused):  # an optimizer step or a reload changes the weights in place
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B.ner" in name or "query.base_layer.weight" in name:
                    param.mul_(1.5)
    torch.testing.assert_close(hidden(fused), hidden(plain), atol=1e-5, rtol=1e-5)
    layer = fused_layers(fused)[0]
    activate_slot(fused, "tc")
    hidden(fused)
    assert list(layer._weight_cache) == ["tc"]  # room for one adapter: the least recently used went
    fused.delete_adapter("tc")
    assert not layer._weight_cache
    fused.train()
    activate_slot(fused, "ner")
    hidden(fused.eval())
    assert list(layer._weight_cache) == ["ner"]
    fused.train()  # training frees the cache: it would only go stale
    assert not layer._weight_cache


def test_frozen_backbone_keeps_peft_lora():
    """PF-L: without a backbone gradient, fusing would add the full weight gradient's work."""
    assert not fused_layers(slotted(fused=True, train_backbone=False))


def test_fused_slots_save_as_plain_peft_adapters(tmp_path):
    model = slotted(fused=True)
    model.save_pretrained(tmp_path, selected_adapters=["ner"])  # PEFT writes a named adapter to its own folder
    config = (tmp_path / "ner" / "adapter_config.json").read_text()
    assert "custom" not in config.lower() and "Fused" not in config
    torch.manual_seed(0)
    backbone = MtpfModel(MtpfConfig.from_backbone(tiny_bert_config(), tpl_layers=2, r=4, lora_alpha=8))
    reloaded = PeftModel.from_pretrained(backbone, str(tmp_path / "ner"), adapter_name="ner").eval()
    assert not fused_layers(reloaded)
    expected = model.eval()(input_ids=IDS, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(reloaded(input_ids=IDS, attention_mask=MASK).last_hidden_state, expected)


def test_mixed_batches_use_the_cache_when_every_adapter_fits():
    plain, fused = slotted(fused=False).eval(), slotted(fused=True).eval()
    names = ["tc", "__base__", "ner"]  # one row each: a slot, the backbone alone, the other slot
    layer = fused_layers(fused)[0]
    for room, cached in ((2, ["tc", "ner"]), (1, [])):  # with room for one adapter, PEFT's mixed path runs
        set_weight_cache(fused, room)
        with torch.no_grad():
            expected = plain(input_ids=IDS, attention_mask=MASK, adapter_names=names).last_hidden_state
            got = fused(input_ids=IDS, attention_mask=MASK, adapter_names=names).last_hidden_state
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert list(layer._weight_cache) == cached


def test_merged_weights_stay_in_fp32_under_autocast():
    plain, fused = slotted(fused=False).eval(), slotted(fused=True).eval()
    set_weight_cache(fused, 2)
    for names in (None, ["tc", "__base__", "ner"]):  # the active slot, then a mixed batch
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected = plain(input_ids=IDS, attention_mask=MASK, adapter_names=names).last_hidden_state
            got = fused(input_ids=IDS, attention_mask=MASK, adapter_names=names).last_hidden_state
        assert got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
    cached = [weight for layer in fused_layers(fused) for _, weight in layer._weight_cache.values()]
    assert cached and all(weight.dtype == torch.float32 for weight in cached)
