"""The evaluation suites (`smoke`, `quick`, `paper`): what each runs and exactly what a reduced one cuts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from mtpf.apps.ner.data import PAPER_NER_DATASETS
from mtpf.apps.ner.train import NerProtocol
from mtpf.evaluation.tc import LEGACY_PROTOCOL, TC_TASKS, TcProtocol


@dataclass
class SuiteSettings:
    name: str
    description: str  # what the suite runs and, for reduced suites, exactly what it cuts
    ner_datasets: list[str]
    fractions: list[float]
    seeds: list[int]
    tc_tasks: list[str]  # Table 6 column names
    ner: NerProtocol = field(default_factory=NerProtocol)
    tc: TcProtocol = field(default_factory=TcProtocol)


SUITES = {
    "smoke": SuiteSettings(
        "smoke",
        "CI check that every stage runs (minutes on any encoder; numbers are not meaningful): CrossNER with 64 "
        "train / 64 dev / 64 test sentences, 1 head epoch + 1 joint epoch at lr 1e-3, length 64; Emotion and "
        "FinancialPhrasebank with 2 probe experiments on 128 eval rows, length 64.",
        ["crossner"],
        [1.0],
        [0],
        ["Emo.", "FPB"],
        NerProtocol(
            warmup_epochs=1,
            epochs=1,
            batch_size=16,
            learning_rate=1e-3,
            warmup_learning_rate=5e-3,
            max_length=64,
            max_train_sentences=64,
            max_dev_sentences=64,
            max_test_sentences=64,
            eval_batch_size=64,
        ),
        TcProtocol(n_experiments=2, max_eval_rows=128, max_length=64),
    ),
    "quick": SuiteSettings(
        "quick",
        "About one CPU hour on a MiniLM-class model. Cuts against `paper`: NER trains on a seeded 1,000-sentence "
        "subset of each training set (all of it where smaller; a data fraction f takes f of that subset), "
        "dev capped at 500 and test at 2,000 sentences "
        "(seeded), 2 head-only epochs (lr 5e-3) + 6 joint epochs at lr 1e-3 (paper: 10 + 30 at 2e-5) with batch 32, "
        "sub-tokens capped at 128, full training data only, one seed; an epoch is at least 20 optimizer steps (a "
        "10 % run repeats its 100 sentences 7 times per epoch: 22 steps, where the paper's protocol would stop after "
        "4; full runs are unchanged). TC keeps MTEB's probe (samples per label, "
        "10 experiments) and the model's own sentence embedding, but caps every eval split at 2,048 label-stratified "
        "rows (MTEB caps only some) and texts at 128 sub-tokens (all-MiniLM-L6-v2's own limit is 256).",
        list(PAPER_NER_DATASETS),
        [1.0],
        [0],
        list(TC_TASKS),
        NerProtocol(
            warmup_epochs=2,
            epochs=6,
            batch_size=32,
            learning_rate=1e-3,
            warmup_learning_rate=5e-3,
            max_length=128,
            max_train_sentences=1000,
            max_dev_sentences=500,
            max_test_sentences=2000,
            min_steps_per_epoch=20,
        ),
        TcProtocol(n_experiments=10, max_eval_rows=2048, max_length=128),
    ),
    "paper": SuiteSettings(
        "paper",
        "The paper's protocol (a GPU job): all five NER datasets with 100/50/20/10 % of the training data, LoRA "
        "r=32/alpha=64 on query, key and MLP of every layer, 10 head-only + 30 joint epochs, batch 64, lr 2e-5, "
        "AdamW wd 0.01; all 16 MTEB classification tasks with MTEB's own settings, each text embedded as the model "
        "defines it (its pooling, normalisation and max_seq_length, as sentence-transformers does).",
        list(PAPER_NER_DATASETS),
        [1.0, 0.5, 0.2, 0.1],
        [0],
        list(TC_TASKS),
    ),
}


def tc_column(name: str) -> str:
    """A TC task given by its Table 6 column (`Bank.`) or MTEB name (`Banking77Classification`)."""
    for column, spec in TC_TASKS.items():
        if name in (column, spec.mteb_name):
            return column
    raise ValueError(f"Unknown TC task {name!r}; use a column {list(TC_TASKS)} or its MTEB name.")


def suite_settings(name: str, **overrides) -> SuiteSettings:
    """A named suite with some fields replaced (None leaves the suite's value)."""
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; use one of {sorted(SUITES)}.")
    settings = SUITES[name]
    ner_overrides = {k: v for k, v in overrides.pop("ner", {}).items() if v is not None}
    tc_overrides = {k: v for k, v in overrides.pop("tc", {}).items() if v is not None}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    return replace(settings, ner=replace(settings.ner, **ner_overrides), tc=replace(settings.tc, **tc_overrides))


def settings_from_dict(data: dict) -> SuiteSettings:
    """SuiteSettings from `asdict(settings)` (a worker's job file)."""
    return SuiteSettings(**{**data, "ner": NerProtocol(**data["ner"]), "tc": TcProtocol(**data["tc"])})


def saved_settings(suite: dict, path: Path) -> SuiteSettings:
    """The settings a results file was made with: its suite, protocols (missing fields: defaults), fractions, seeds."""
    if suite.get("name") not in SUITES:
        raise ValueError(f"{path}: unknown suite {suite.get('name')!r}; known: {sorted(SUITES)}.")
    return replace(
        SUITES[suite["name"]],
        ner=saved_protocol_of(suite, "ner"),
        tc=saved_protocol_of(suite, "tc"),
        fractions=suite.get("fractions", SUITES[suite["name"]].fractions),
        seeds=suite.get("seeds", SUITES[suite["name"]].seeds),
    )


def saved_protocol_of(suite: dict, family: str) -> NerProtocol | TcProtocol:
    """The protocol a results file records; a field it predates takes the value that was in force then."""
    if family == "ner":
        return NerProtocol(**suite.get("ner", {}))
    return TcProtocol(**{**LEGACY_PROTOCOL, **suite.get("tc", {})})
