"""Pre-finetuning: arguments, the trained module, the trainer, and building a run (`build_trainer`, `export`)."""

from mtpf.training.args import DataArguments, ModelArguments, MtpfTrainingArguments, parse_args
from mtpf.training.build import build_trainer, export, resolve_resume

__all__ = [
    "DataArguments",
    "ModelArguments",
    "MtpfTrainingArguments",
    "build_trainer",
    "export",
    "parse_args",
    "resolve_resume",
]
