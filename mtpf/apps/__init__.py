"""Apps on one backbone: an app's own adapter fine-tuned from a release (`finetune.py`), NER or sentence
classification (`classification.py`)."""

from mtpf.apps.finetune import (
    APP_FILE,
    APP_TASKS,
    PROTOCOLS,
    AppError,
    check_app_backbone,
    finetune_app,
    read_app,
    saved_head,
)

__all__ = [
    "APP_FILE",
    "APP_TASKS",
    "PROTOCOLS",
    "AppError",
    "check_app_backbone",
    "finetune_app",
    "read_app",
    "saved_head",
]
