"""The sentence-classification app kind: `data.py` (its readers), `train.py` (its protocol), `kind.py` (its
registration)."""

from mtpf.apps.classification.data import ClassificationDataError, LabeledText, check_classes, load_classification_spec
from mtpf.apps.classification.kind import CLASSIFICATION_KIND
from mtpf.apps.classification.train import CLASSIFICATION, ClassificationProtocol, ClassificationRun, train_classifier

__all__ = [
    "CLASSIFICATION",
    "CLASSIFICATION_KIND",
    "ClassificationDataError",
    "ClassificationProtocol",
    "ClassificationRun",
    "LabeledText",
    "check_classes",
    "load_classification_spec",
    "train_classifier",
]
