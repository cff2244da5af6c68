"""Apps on one backbone: an app's own adapter fine-tuned from a release (`finetune.py`), of a kind registered in
`kinds.py`: the built-in kinds are NER (`ner.py`) and sentence classification (`classification.py`)."""

from mtpf.apps import classification, ner  # the built-in kinds register themselves on import
from mtpf.apps.finetune import (
    APP_FILE,
    FinetuneArguments,
    check_app_backbone,
    finetune_app,
    read_app,
    saved_head,
)
from mtpf.apps.kinds import APP_KINDS, AppError, AppKind, get_app_kind, register_app_kind

__all__ = [
    "APP_FILE",
    "APP_KINDS",
    "AppError",
    "AppKind",
    "FinetuneArguments",
    "check_app_backbone",
    "classification",
    "finetune_app",
    "get_app_kind",
    "ner",
    "read_app",
    "register_app_kind",
    "saved_head",
]
