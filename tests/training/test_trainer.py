"""MtpfTrainer on real small runs (tiny random BERT, real pairs and corpus from ../shared)."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from mtpf.pcgrad import flat_grad, project_conflicting, smallest_cosine
from mtpf.training.trainer import RUN_INFO_FILE
from tests.conftest import build_smoke_trainer


def snapshot(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def part(params: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    if kind in ("ner", "tc"):
        return {n: p for n, p in params.items() if "lora_" in n and f".{kind}." in n}
    if kind == "head":
        return {n: p for n, p in params.items() if n.startswith("heads.ner.")}
    return {n: p for n, p in params.items() if "lora_" not in n and not n.startswith("heads.ner.")}


def identical(before: dict, after: dict) -> bool:
    return all(torch.equal(before[n], after[n]) for n in before)


class Snapshots(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.states = trainer, [snapshot(trainer)]

    def on_step_end(self, args, state, control, **kwargs):
        self.states.append(snapshot(self.trainer))


def test_both_losses_fall(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--max_steps", "40", "--logging_steps", "10", "--save_strategy", "no"
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss_ner" in entry]
    assert len(logs) == 4
    for task in ("ner", "tc"):
        assert logs[-1][f"loss_{task}"] < 0.9 * logs[0][f"loss_{task}"], [entry[f"loss_{task}"] for entry in logs]


def test_each_slot_learns_only_from_its_task(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--max_steps", "2", "--task_schedule", "alternate", "--save_strategy", "no"
    )
    snapshots = Snapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    initial, after_ner, after_tc = snapshots.states
    # the optimizer held both slots from the start
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for n, p in trainer.model.named_parameters() if "lora_" in n)
    # step 1 ran NER only, step 2 TC only
    assert identical(part(initial, "tc"), part(after_ner, "tc"))
    assert not identical(part(initial, "ner"), part(after_ner, "ner"))
    assert not identical(part(initial, "backbone"), part(after_ner, "backbone"))
    assert identical(part(after_ner, "ner"), part(after_tc, "ner"))
    assert identical(part(after_ner, "head"), part(after_tc, "head"))
    assert not identical(part(after_ner, "tc"), part(after_tc, "tc"))
    assert not identical(part(after_ner, "backbone"), part(after_tc, "backbone"))


def test_pf_lora_leaves_the_backbone_untouched(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path, pseudo_label_cache, "--mode", "pf_lora", "--max_steps", "2", "--save_strategy", "no"
    )
    before = snapshot(trainer)
    trainer.train()
    after = snapshot(trainer)
    assert identical(part(before, "backbone"), part(after, "backbone"))
    assert not identical(part(before, "ner"), part(after, "ner"))
    assert not identical(part(before, "tc"), part(after, "tc"))


class CrashAfterSave(TrainerCallback):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--tc_mini_batch_size", "4"),  # GradCache: its RNG replay must survive the restart
        ("--pcgrad", "true"),
        ("--task_schedule", "alternate", "--task_ratio", "1:2"),  # which task runs is a function of the step
    ],
    ids=["plain", "gradcache", "pcgrad", "alternate"],
)
def test_resume_equals_uninterrupted_run(tmp_path, pseudo_label_cache, extra):
    common = ("--max_steps", "4", "--save_steps", "2", "--lora_dropout", "0.1", *extra)
    straight = build_smoke_trainer(tmp_path / "straight", pseudo_label_cache, *common)
    straight.train()
    expected = snapshot(straight)

    killed = build_smoke_trainer(tmp_path / "killed", pseudo_label_cache, *common)
    killed.add_callback(CrashAfterSave(at_step=2))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert (tmp_path / "killed" / "checkpoint-2" / RUN_INFO_FILE).is_file()
    resumed = build_smoke_trainer(tmp_path / "killed", pseudo_label_cache, *common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-2"))
    got = snapshot(resumed)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_resume_from_another_mode_is_refused(tmp_path, pseudo_label_cache):
    build_smoke_trainer(tmp_path, pseudo_label_cache, "--max_steps", "1", "--save_steps", "1").train()
    other = build_smoke_trainer(tmp_path, pseudo_label_cache, "--mode", "mtpf", "--max_steps", "2")
    with pytest.raises(
        ValueError, match=r"checkpoint-1: it belongs to another run \(mode: checkpoint 'mtpf_tpl' vs this run 'mtpf'"
    ):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_pcgrad_step_projects_shared_gradients(tmp_path, pseudo_label_cache, dropout_free_encoder_dir):
    args = ("--backbone", str(dropout_free_encoder_dir), "--max_steps", "1", "--save_strategy", "no")
    trainer = build_smoke_trainer(tmp_path, pseudo_label_cache, *args, "--pcgrad", "true")
    model = trainer.model
    inputs = trainer.train_dataset[0]
    shared = model.shared_parameters()

    def task_grad(task):
        model.zero_grad(set_to_none=True)
        trainer.task_backward(model, task, trainer._prepare_inputs(inputs)[task], 1.0)
        return flat_grad(shared), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and "lora_" in n
        }

    ner_shared, ner_slot = task_grad("ner")
    tc_shared, tc_slot = task_grad("tc")
    if torch.dot(ner_shared, tc_shared) > 0:  # make the tasks conflict, so that the projection has to act
        tc = trainer.tasks["tc"]
        contrastive = tc.loss
        tc.loss = lambda anchors, positives: -contrastive(anchors, positives)
        tc_shared, tc_slot = task_grad("tc")
    assert torch.dot(ner_shared, tc_shared) < 0
    projected = project_conflicting([ner_shared, tc_shared])
    assert not torch.allclose(projected, ner_shared + tc_shared, atol=1e-6)  # a plain sum would fail below
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, inputs)
    combined = flat_grad(shared)
    assert all(p.grad is None for n, p in model.named_parameters() if "pooler" in n)  # untouched by both tasks
    torch.testing.assert_close(combined, projected, atol=1e-6, rtol=1e-5)
    for name, grad in {**ner_slot, **tc_slot}.items():  # slots keep their own task's gradient
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-7, rtol=1e-6)
    logs = {"loss": 1.0}
    trainer.log(logs)  # the step's conflict statistics reach the training log
    assert logs["grad_cosine"] == round(smallest_cosine([ner_shared, tc_shared]), 4)
    assert logs["pcgrad_conflicts"] == 1.0


def test_ner_head_gets_its_own_learning_rate(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(tmp_path, pseudo_label_cache, "--ner_head_learning_rate", "0.5", "--max_steps", "1")
    optimizer = trainer.create_optimizer()
    head = {id(p) for p in trainer.model.heads["ner"].parameters()}
    rates = {group["lr"] for group in optimizer.param_groups if any(id(p) in head for p in group["params"])}
    others = {group["lr"] for group in optimizer.param_groups if not any(id(p) in head for p in group["params"])}
    assert rates == {0.5} and others == {trainer.args.learning_rate}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for p in trainer.model.parameters() if p.requires_grad
    )


class FailDuringSave:
    """Make the checkpoint save of one step die half-way (after the weights, before the RNG state)."""

    def __init__(self, trainer, at_step: int):
        self.trainer, self.at_step = trainer, at_step
        self.original = trainer._save_rng_state

    def __call__(self, output_dir):
        if self.trainer.state.global_step == self.at_step:
            raise KeyboardInterrupt("simulated kill during the checkpoint save")
        return self.original(output_dir)


def test_resume_skips_a_checkpoint_whose_save_was_killed(tmp_path, pseudo_label_cache, caplog):
    """A kill inside the save of checkpoint-4 leaves a half folder: `last` takes checkpoint-2, says why, and the
    resumed run ends where an uninterrupted one does."""
    from mtpf.training import resolve_resume
    from mtpf.training.args import MtpfTrainingArguments

    common = ("--max_steps", "6", "--save_steps", "2", "--save_total_limit", "1")
    straight = build_smoke_trainer(tmp_path / "straight", pseudo_label_cache, *common)
    straight.train()
    killed = build_smoke_trainer(tmp_path / "killed", pseudo_label_cache, *common)
    killed._save_rng_state = FailDuringSave(killed, at_step=4)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    folder = tmp_path / "killed"
    assert (folder / "checkpoint-4").is_dir() and not (folder / "checkpoint-4" / RUN_INFO_FILE).exists()
    assert (folder / "checkpoint-2" / RUN_INFO_FILE).is_file()  # not rotated away before 4 was complete
    args = MtpfTrainingArguments(output_dir=str(folder), resume_from_checkpoint="last", use_cpu=True)
    assert resolve_resume(args) == str(folder / "checkpoint-2")
    assert "Skipping" in caplog.text and "checkpoint-4: incomplete" in caplog.text
    resumed = build_smoke_trainer(folder, pseudo_label_cache, *common)
    resumed.train(resume_from_checkpoint=resolve_resume(args))
    expected, got = snapshot(straight), snapshot(resumed)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_resume_last_without_a_checkpoint_says_so(tmp_path, caplog):
    from mtpf.training import resolve_resume
    from mtpf.training.args import MtpfTrainingArguments

    args = MtpfTrainingArguments(output_dir=str(tmp_path / "new"), resume_from_checkpoint="last", use_cpu=True)
    assert resolve_resume(args) is None
    assert "No complete checkpoint in" in caplog.text and "training from step 0" in caplog.text


@pytest.mark.parametrize(
    "flags",
    [
        ("--tc_mini_batch_size", "4"),  # GradCache
        ("--tc_length_chunk", "3"),  # length-sorted chunks, one graph
        ("--tc_mini_batch_size", "4", "--tc_length_chunk", "1"),  # GradCache on length-sorted mini-batches
    ],
    ids=["cached", "length_chunks", "cached_length_sorted"],
)
def test_tc_batch_splitting_trains_like_the_plain_step(tmp_path, pseudo_label_cache, dropout_free_encoder_dir, flags):
    """Three optimizer steps with the TC batch embedded in pieces end at the same weights as in one forward."""
    common = ("--backbone", str(dropout_free_encoder_dir), "--max_steps", "3", "--save_strategy", "no")
    plain = build_smoke_trainer(tmp_path / "plain", pseudo_label_cache, *common)
    plain.train()
    cached = build_smoke_trainer(tmp_path / "cached", pseudo_label_cache, *common, *flags)
    cached.train()
    expected, got = snapshot(plain), snapshot(cached)
    assert not identical(expected, snapshot(build_smoke_trainer(tmp_path / "fresh", pseudo_label_cache, *common)))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)
