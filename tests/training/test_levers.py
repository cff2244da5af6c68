"""The quality levers of a pre-finetuning run: NER's share of the backbone gradient, the slots' learning rate, the TC
anchor to the frozen base, per-slot placement and release-time interpolation (real small runs, tiny random BERT)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mtpf.release import validate_release
from tests.conftest import build_smoke_trainer, train_smoke_release
from tests.training.test_trainer import Snapshots, identical, part

NO_SAVE = ("--save_strategy", "no")


def test_ner_backbone_grad_scale_zero_leaves_the_backbone_to_tc(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path,
        pseudo_label_cache,
        "--max_steps",
        "2",
        "--task_schedule",
        "alternate",
        "--ner_backbone_grad_scale",
        "0",
        *NO_SAVE,
    )
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    initial, after_ner, after_tc = snapshots.states
    # the NER step moved its slot and head, but not the backbone (it had no gradient at all, so AdamW skipped it)
    assert identical(part(initial, "backbone"), part(after_ner, "backbone"))
    assert not identical(part(initial, "ner"), part(after_ner, "ner"))
    assert not identical(part(initial, "head"), part(after_ner, "head"))
    assert not identical(part(after_ner, "backbone"), part(after_tc, "backbone"))


def test_ner_backbone_grad_scale_scales_only_the_ner_share(tmp_path, pseudo_label_cache, dropout_free_encoder_dir):
    """With both tasks in one step, the backbone gradient is scale·g_ner + g_tc, the slots' gradients unscaled."""

    def gradients(scale: str) -> dict[str, torch.Tensor]:
        trainer = build_smoke_trainer(
            tmp_path / scale,
            pseudo_label_cache,
            "--backbone",
            str(dropout_free_encoder_dir),
            "--teacher",
            str(dropout_free_encoder_dir),
            "--ner_backbone_grad_scale",
            scale,
            *NO_SAVE,
        )
        inputs = trainer.train_dataset[0]
        trainer.model.zero_grad(set_to_none=True)
        trainer.training_step(trainer.model, inputs)
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    full, half, none = gradients("1"), gradients("0.5"), gradients("0")
    backbone = [n for n in full if "lora_" not in n and not n.startswith("heads.")]
    slots = [n for n in full if "lora_" in n]
    assert backbone and slots
    for name in backbone:  # linear in the scale: g(0.5) = (g(1) + g(0)) / 2
        torch.testing.assert_close(half[name], (full[name] + none[name]) / 2, atol=1e-6, rtol=1e-4)
    for name in slots:
        torch.testing.assert_close(none[name], full[name])


def test_slot_learning_rate_gets_its_own_group(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--max_steps", "1", "--slot_learning_rate", "0.01", *NO_SAVE
    )
    trainer.create_optimizer()
    slots = {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n}
    by_rate = {g["lr"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert slots and by_rate[0.01] == slots
    assert not any(ids & slots for rate, ids in by_rate.items() if rate != 0.01)


def test_slot_learning_rate_for_some_slots_only(tmp_path, pseudo_label_cache):
    rates = ("--slot_learning_rate", "0.01", "--slot_learning_rate_tasks", "ner")
    trainer = build_smoke_trainer(tmp_path, pseudo_label_cache, "--max_steps", "1", *rates, *NO_SAVE)
    trainer.create_optimizer()
    rate_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    ner = [rate_of[id(p)] for n, p in named.items() if "lora_" in n and ".ner." in n]
    tc = [rate_of[id(p)] for n, p in named.items() if "lora_" in n and ".tc." in n]
    assert ner and set(ner) == {0.01}
    assert tc and set(tc) == {trainer.args.learning_rate}
    wrong = build_smoke_trainer(tmp_path / "x", pseudo_label_cache, "--max_steps", "1", *rates[:3], "pos", *NO_SAVE)
    with pytest.raises(ValueError, match=r"--slot_learning_rate_tasks \['pos'\]: not a task of this run"):
        wrong.create_optimizer()
    with pytest.raises(ValueError, match="--slot_learning_rate_tasks needs --slot_learning_rate"):
        build_smoke_trainer(tmp_path / "y", pseudo_label_cache, "--slot_learning_rate_tasks", "ner", *NO_SAVE)


def test_tc_anchor_pulls_towards_the_frozen_base(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--max_steps", "1", "--mode", "pf_tc", "--tc_anchor_weight", "2", *NO_SAVE
    )
    anchor = trainer.model.tasks["tc"].anchor
    assert anchor is not None and anchor.weight == 2.0
    assert not any("base_encoder" in name for name in trainer.model.state_dict())  # not saved, not optimized
    batch = trainer.train_dataset[0]["tc"]
    trainer.model.eval()  # no dropout: the frozen base has none either
    embeddings = trainer.model(task="tc", **batch)
    assert anchor(embeddings, batch).item() == pytest.approx(0.0, abs=1e-5)  # step 0: the model is the base
    with torch.no_grad():
        for name, p in trainer.model.encoder.named_parameters():
            if "lora_" not in name:
                p.add_(0.05 * torch.randn_like(p))
    assert anchor(trainer.model(task="tc", **batch), batch).item() > 1e-3


def test_tc_anchor_refuses_gradient_caching(tmp_path, pseudo_label_cache):
    with pytest.raises(ValueError, match="tc_anchor_weight cannot be combined"):
        build_smoke_trainer(
            tmp_path, pseudo_label_cache, "--tc_anchor_weight", "1", "--tc_mini_batch_size", "4", *NO_SAVE
        )


def test_slot_layers_place_each_slot(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--max_steps", "1", "--slot_layers", "tc=0", *NO_SAVE
    )  # smoke: 2 layers, tpl_layers 1
    slots = trainer.model.encoder.config.task_slots
    assert slots["tc"]["layers"] == [0, 1] and slots["ner"]["layers"] == [1]
    assert trainer.run_info["slot_layers"] == {"tc": 0}
    with pytest.raises(ValueError, match="TASK=N"):
        build_smoke_trainer(tmp_path, pseudo_label_cache, "--slot_layers", "tc", *NO_SAVE)


def test_slot_ranks_give_one_slot_another_rank_at_the_same_scale(tmp_path, pseudo_label_cache):
    release = train_smoke_release(tmp_path, pseudo_label_cache, "--max_steps", "1", "--slot_ranks", "tc=8", *NO_SAVE)
    for task, (rank, alpha) in {"tc": (8, 16), "ner": (4, 8)}.items():  # smoke: rank 4, alpha 8
        adapter = json.loads((release / f"adapters/{task}/adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (rank, alpha)
        tensors = load_file(release / f"adapters/{task}/adapter_model.safetensors")
        assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {rank}
    assert json.loads((release / "backbone/config.json").read_text())["pretraining"]["slot_ranks"] == {"tc": 8}
    with pytest.raises(ValueError, match=r"--slot_ranks 'tc=eight': expected TASK=N with N a LoRA rank"):
        build_smoke_trainer(tmp_path / "x", pseudo_label_cache, "--slot_ranks", "tc=eight", *NO_SAVE)
    with pytest.raises(ValueError, match=r"Slot ranks given for \['pos'\]"):
        build_smoke_trainer(tmp_path / "y", pseudo_label_cache, "--slot_ranks", "pos=8", *NO_SAVE)


def test_release_interpolation_averages_the_backbone_and_keeps_the_slots(tmp_path, pseudo_label_cache):
    from mtpf.release import load_encoder

    release = train_smoke_release(
        tmp_path, pseudo_label_cache, "--max_steps", "3", "--release_interpolation", "0.25", *NO_SAVE
    )
    trained = tmp_path / "release-trained"
    assert validate_release(release) == validate_release(trained) == ["ner", "tc"]
    base_encoder, _ = load_encoder("offline:tiny-bert")
    base = {f"backbone.{k}": v for k, v in base_encoder.state_dict().items()}
    mixed, pure = load_file(release / "backbone/model.safetensors"), load_file(trained / "backbone/model.safetensors")
    moved = [k for k in pure if pure[k].is_floating_point() and not torch.equal(pure[k], base[k])]
    assert moved
    for key in moved:
        torch.testing.assert_close(mixed[key], base[key] + 0.25 * (pure[key] - base[key]))
    for task in ("ner", "tc"):  # slots unchanged, re-tied to the new backbone (validate_release checked the digest)
        adapter = f"adapters/{task}/adapter_model.safetensors"
        assert (release / adapter).read_bytes() == (trained / adapter).read_bytes()
    recorded = json.loads((release / "backbone/config.json").read_text())["pretraining"]
    assert recorded["interpolation"] == {"base": "offline:tiny-bert", "alpha": 0.25} and recorded["steps"] == 3


def test_pair_sampling_temperature_is_recorded_only_when_it_flattens_the_draw(tmp_path, pseudo_label_cache):
    """The release records the dataset draw it was trained with (the card's recipe check reads it), but runs at the
    size-proportional default keep their identity, so earlier checkpoints still resume."""
    flat = build_smoke_trainer(tmp_path / "a", pseudo_label_cache, "--pair_sampling_temperature", "2", *NO_SAVE)
    assert flat.run_info["pair_sampling_temperature"] == 2.0
    assert flat.train_dataset.batches["tc"].sampler.temperature == 2.0  # and the draw uses it
    default = build_smoke_trainer(tmp_path / "b", pseudo_label_cache, *NO_SAVE)
    assert "pair_sampling_temperature" not in default.run_info
