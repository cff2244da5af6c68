"""Apps on one backbone: an app's own adapter fine-tuned from a release (`finetune.py`)."""

from mtpf.apps.finetune import APP_FILE, AppError, finetune_app, read_app

__all__ = ["APP_FILE", "AppError", "finetune_app", "read_app"]
