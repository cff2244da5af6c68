"""The NER app kind: `data.py` (CoNLL-style readers of local, user and Hub datasets), `train.py` (the LoRA protocol
the evaluation suite scores, seqeval F1), `kind.py` (its registration: answers with entities, the export's F1
check)."""

from mtpf.apps.ner.kind import NER_KIND
from mtpf.apps.ner.train import DOWNSTREAM, NerProtocol, NerRun, entity_f1, train_ner

__all__ = ["DOWNSTREAM", "NER_KIND", "NerProtocol", "NerRun", "entity_f1", "train_ner"]
