"""The NER pre-finetuning task: batches, head, loss and step."""

from mtpf.tasks.ner.task import NerTask

__all__ = ["NerTask"]
