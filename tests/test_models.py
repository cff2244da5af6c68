"""Loading any model by name: labels, releases vs encoders, the weights' hash, fresh copies per use."""

from __future__ import annotations

import torch

from mtpf.models import is_release, load_model, model_hash, split_label


def test_labels_and_names():
    assert split_label("mine=/some/path") == ("mine", "/some/path")
    assert split_label("offline:tiny-bert") == ("offline:tiny-bert", "offline:tiny-bert")


def test_an_encoder_loads_without_slots_and_hashes_by_its_weights():
    loaded = load_model("tiny=offline:tiny-bert")
    assert (loaded.name, loaded.path, loaded.adapters) == ("tiny", "offline:tiny-bert", {})
    assert loaded.config_hash == model_hash("offline:tiny-bert") and len(loaded.config_hash) == 16
    assert not is_release("offline:tiny-bert")


def test_a_release_loads_its_trained_slots_and_every_use_starts_fresh(slotted_release):
    loaded = load_model(str(slotted_release))
    assert is_release(str(slotted_release)) and sorted(loaded.adapters) == ["ner", "tc"]
    batch = loaded.tokenizer(["A short sentence."], return_tensors="pt")
    with torch.no_grad():
        plain = loaded.fresh_backbone()(**batch).pooler_output
        merged = loaded.encoder_for("tc")(**batch).pooler_output
        again = loaded.fresh_backbone()(**batch).pooler_output
    assert not torch.allclose(plain, merged)  # the slot's LoRA is merged in
    torch.testing.assert_close(plain, again)  # merging touched a copy, never the loaded backbone
    assert loaded.config_hash == model_hash(str(slotted_release))
