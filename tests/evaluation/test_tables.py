from dataclasses import asdict

from mtpf.evaluation.tables import results_markdown
from mtpf.results import ResultRecord


def record(model: str, family: str, dataset: str, column: str, value: float, fraction=1.0, seed=0, split="test"):
    metric = "f1" if family == "ner" else "accuracy"
    return asdict(ResultRecord(model, family, dataset, split, metric, value, column, None, fraction, seed))


def test_tables_average_common_datasets_and_show_gains():
    results = [
        record("base", "ner", "conll2003", "CoNLL", 80.0),
        record("base", "ner", "conll2003", "CoNLL", 82.0, seed=1),  # seeds are averaged: 81.0
        record("base", "ner", "jnlpba", "BioNLP", 60.0),
        record("pf", "ner", "conll2003", "CoNLL", 84.0),  # pf has no BioNLP score
        record("base", "ner", "conll2003", "CoNLL", 50.0, fraction=0.1),
        record("pf", "ner", "conll2003", "CoNLL", 58.5, fraction=0.1),
        record("base", "tc", "Banking77Classification", "Bank.", 70.0),
        record("pf", "tc", "Banking77Classification", "Bank.", 75.0),
        record("pf", "tc", "AmazonCounterfactualClassification", "ACF", 10.0, split="validation"),  # not shown
    ]
    payload = {
        "suite": {"name": "t"},
        "models": [{"model": "base"}, {"model": "pf"}],
        "results": results,
        "missing": [
            {"model": "pf", "family": "ner", "dataset": "jnlpba", "reason": "data not found"},
            {"model": "base", "family": "tc", "dataset": "PatentClassification", "reason": "offline"},
            {"model": "pf", "family": "tc", "dataset": "PatentClassification", "reason": "offline"},
        ],
    }
    text = results_markdown(payload)
    assert "| `base` | 81.0 | 60.0 | 81.0 |" in text  # average over CoNLL only, the dataset both have
    assert "| `pf` | 84.0 | – | 84.0 (+3.0) |" in text
    assert "left out: BioNLP" in text
    assert "Data portion 10%:" in text and "| `pf` | 58.5 | 58.5 (+8.5) |" in text
    assert "| `pf` | 84.0 (+3.0) | 75.0 (+5.0) | 79.5 (+4.0) |" in text  # Table 1 summary
    assert "ACF" not in text.split("## Text classification")[1].split("\n")[2]
    assert "- ner jnlpba (`pf`): data not found" in text
    assert "- tc PatentClassification (every model): offline" in text  # one line, not one per model
