from dataclasses import asdict
from statistics import mean

from mtpf.evaluation.tables import results_markdown, score_lines, within_noise
from mtpf.results import ResultRecord


def record(model: str, family: str, dataset: str, column: str, value: float, **where):
    """A result row; `where` may set fraction (1.0), seed (0) and split (test)."""
    where = {"fraction": 1.0, "seed": 0, "split": "test"} | where
    metric = "f1" if family == "ner" else "accuracy"
    return asdict(
        ResultRecord(
            model, family, dataset, where["split"], metric, value, column, None, where["fraction"], where["seed"]
        )
    )


def tc_record(model: str, dataset: str, column: str, experiments: list[float]) -> dict:
    return asdict(
        ResultRecord(model, "tc", dataset, "test", "accuracy", mean(experiments), column, None, experiments=experiments)
    )


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
    assert "| `pf` | 84.0 (+3.0) | 75.0 (+5.0) | 75.0 (+5.0) | 79.5 (+4.0) |" in text  # Table 1 summary
    assert "ACF" not in text.split("## Text classification")[1].split("\n")[2]
    assert "- ner jnlpba (`pf`): data not found" in text
    assert "- tc PatentClassification (every model): offline" in text  # one line, not one per model


def test_paired_noise_decides_within_noise():
    base = [70.0, 72.0, 68.0, 71.0, 69.0]
    assert within_noise(base, [x + 1.0 for x in base]) is False  # every draw +1: a real difference
    assert within_noise(base, [70.5, 71.0, 69.0, 70.5, 69.5]) is True  # +0.1 on average, draws disagree
    assert within_noise(base, base) is True
    assert within_noise(base, None) is None and within_noise([1.0], [2.0]) is None


def test_tc_tables_show_spread_noise_marks_and_toxicchat_apart():
    base = {"Bank.": [80.0, 81.0, 79.0, 80.0], "TC": [70.0, 75.0, 65.0, 70.0]}
    real = {"Bank.": [82.0, 83.0, 81.0, 82.0], "TC": [40.0, 45.0, 35.0, 40.0]}  # ToxicChat collapses
    noisy = {"Bank.": [81.0, 80.0, 79.5, 80.0], "TC": [70.0, 75.0, 65.0, 70.0]}
    names = {"Bank.": "Banking77Classification", "TC": "ToxicChatClassification"}
    results = [
        tc_record(model, names[column], column, values)
        for model, scores in (("base", base), ("real", real), ("noisy", noisy))
        for column, values in scores.items()
    ]
    text = results_markdown({"suite": {"name": "t"}, "results": results})
    assert "| `base` | – | 75.0 | 80.0 | – |" in text  # TC over 2 tasks, without ToxicChat over Bank. alone
    assert "| `real` | – | 61.0 (-14.0) | 82.0 (+2.0) | – |" in text  # a real gain: no mark
    assert "| `noisy` | – | 75.1 (+0.1)≈ | 80.1 (+0.1)≈ | – |" in text
    assert "| `base` | 80.0 ± 0.8 | 70.0 ± 4.1 | 75.0 |" in text  # Table 6: mean ± std over experiments
    assert "| `noisy` | 80.1 ± 0.6≈ | 70.0 ± 4.1≈ | 75.1 (+0.1)≈ |" in text
    assert "≈: within noise" in text
    assert "real  tc  Bank. test  accuracy 82.00 ± 0.82" in score_lines({"results": results})
