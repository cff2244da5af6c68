"""The TC pre-finetuning task: batches, head, loss and step."""

from mtpf.tasks.tc.task import TcTask

__all__ = ["TcTask"]
