"""Where the project's offline data lives: `../shared/data` beside the checkout (each folder has a SOURCE.md).

Every default path of a command, benchmark or config field is built here, so moving the data is one edit (or
`MTPF_DATA_ROOT=/path/to/data`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SHARED_DATA = os.environ.get("MTPF_DATA_ROOT", "../shared/data")
NER_DATA = f"{SHARED_DATA}/ner"  # downstream NER datasets (evaluation only)
TC_DATA = f"{SHARED_DATA}/tc"  # local copies of the MTEB classification tasks
PAIRS_DATA = f"{SHARED_DATA}/pairs"  # text pairs for contrastive pre-finetuning
UNLABELED_DATA = f"{SHARED_DATA}/unlabeled"  # sentences for NER distillation
NER_PRETRAIN_DATA = f"{SHARED_DATA}/ner_pretrain"  # WikiANN-en and wikigold, for the offline teacher
CONLL_TEST = f"{NER_DATA}/conll2003/iob2/test.txt"  # the interference analysis' default sentences


@dataclass(frozen=True)
class DataSources:
    """Where an evaluation reads its data: the local NER and TC roots, and whether the Hub may be asked."""

    ner_root: str | os.PathLike = NER_DATA
    tc_root: str | os.PathLike = TC_DATA
    hub_reachable: bool = False
