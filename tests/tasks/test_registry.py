"""The task registry: a third pre-finetuning task, defined and registered here only, trains as a third slot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mtpf.release import validate_release
from mtpf.tasks import TASKS, Task, TaskContext, TaskStep, get_task, task_order
from mtpf.training import export
from mtpf.training.args import DataArguments
from tests.conftest import SHARED_DIR, build_smoke_trainer

STS_TRAIN = SHARED_DIR / "data" / "pairs" / "stsb" / "raw" / "sts-train.csv"


@dataclass
class StsArguments:
    """The third task's own option, parsed with the run's arguments without any edit in mtpf/training/args.py."""

    sts_batch_size: int = field(default=8, metadata={"help": "Pairs per STS batch."})


class StsTask(Task):
    """Sentence-pair similarity regression: the cosine of the two sentence embeddings learns the STS-B score / 5."""

    name = "sts"
    arguments = StsArguments

    @classmethod
    def from_args(cls, data_args) -> StsTask:
        return cls(batch_size=data_args.sts_batch_size)

    def __init__(self, path=STS_TRAIN, batch_size: int = 8, max_length: int = 48) -> None:
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        self.pairs = [(fields[5], fields[6], float(fields[4]) / 5.0) for fields in rows if len(fields) >= 7]
        self.batch_size, self.max_length = batch_size, max_length

    def build_batches(self, context: TaskContext):
        def batch(index: int) -> dict[str, torch.Tensor]:
            order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(context.seed + index))
            chosen = [self.pairs[i] for i in order[: self.batch_size].tolist()]
            texts = [a for a, _, _ in chosen] + [b for _, b, _ in chosen]
            encoded = context.tokenizer(
                texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            return {**encoded, "labels": torch.tensor([score for _, _, score in chosen])}

        return batch

    def compute(self, head, output, labels):
        return output.pooler_output

    def backward(self, step: TaskStep, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        embeddings = step.forward(batch)
        half = len(embeddings) // 2
        cosine = F.cosine_similarity(embeddings[:half], embeddings[half:])
        loss = F.mse_loss(cosine, batch["labels"].to(cosine.dtype)) * scale
        step.backward(loss)
        return loss.detach()


@pytest.fixture
def sts_registered(monkeypatch):
    monkeypatch.setitem(TASKS, "sts", StsTask)  # registered for this test only
    return StsTask


def test_a_third_task_trains_its_own_slot_without_touching_ner_or_tc_code(sts_registered, tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path,
        pseudo_label_cache,
        "--tasks",
        "ner",
        "tc",
        "sts",
        "--max_steps",
        "3",
        "--save_strategy",
        "no",
        "--sts_batch_size",
        "4",
    )
    assert list(trainer.tasks) == ["ner", "tc", "sts"]
    assert trainer.tasks["sts"].batch_size == 4  # its own option, from the command line
    trainer.train()
    assert {f"loss_{task}" for task in ("ner", "tc", "sts")} <= {k for log in trainer.state.log_history for k in log}
    release = export(trainer, DataArguments(release_dir=str(tmp_path / "release")))
    assert sorted(validate_release(release)) == ["ner", "sts", "tc"]  # config.json keeps its keys sorted
    config = json.loads((release / "backbone" / "config.json").read_text())
    assert config["pretraining"]["tasks"] == ["ner", "tc", "sts"]
    assert all(config["task_slots"][task]["trained"] for task in ("ner", "tc", "sts"))
    weights = load_file(str(release / "adapters" / "sts" / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and value.abs().max() > 0 for name, value in weights.items())


def test_unknown_tasks_are_errors():
    with pytest.raises(ValueError, match=r"Unknown task 'qa'; registered tasks: \['ner', 'tc'\]"):
        get_task("qa")
    with pytest.raises(ValueError, match="Unknown task 'qa'"):
        task_order(["ner", "qa"])
    from mtpf.training.args import ModelArguments

    with pytest.raises(ValueError, match="Unknown task 'qa'"):
        ModelArguments(task_names=["ner", "qa"])
    with pytest.raises(ValueError, match="already registered"):
        from mtpf.tasks import register_task

        class OtherNer(Task):
            name = "ner"

        register_task(OtherNer)
