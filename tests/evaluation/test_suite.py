import json

import pytest

from mtpf.cli import merge_repeated
from mtpf.evaluation.store import merge_results
from mtpf.evaluation.suite import SuiteRun
from mtpf.evaluation.suites import SUITES, suite_settings, tc_column
from mtpf.results import ResultRecord, load_results
from tests.conftest import REPO_ROOT, TINY, eval_command, run_command


def smoke_result_keys(*models: str) -> set[tuple[str, str, str]]:
    """(model, family, dataset) of every score the smoke suite gives each model."""
    datasets = [("ner", "crossner"), ("tc", "EmotionClassification"), ("tc", "FinancialPhrasebankClassification")]
    return {(model, family, dataset) for model in models for family, dataset in datasets}


def test_smoke_suite_cli_writes_results_and_tables_then_resumes(slotted_release, smoke_eval, tmp_path):
    import shutil

    output = tmp_path / "eval"
    shutil.copytree(smoke_eval[0], output)
    models = smoke_eval[1]
    records = load_results(output / "results.json")  # the schema the model cards read
    payload = json.loads((output / "results.json").read_text())
    assert payload["suite"]["name"] == "smoke" and payload["missing"] == []
    assert [m["path"] for m in payload["models"]] == [TINY, str(slotted_release)]
    assert {(r.model, r.family, r.dataset) for r in records} == smoke_result_keys(TINY, "tpl")
    hashes = {r.model: r.config_hash for r in records}
    assert len(set(hashes.values())) == 2 and all(hashes.values())
    table = (output / "results.md").read_text()
    assert "## NER, full training data (Table 5 layout)" in table and "| Model | CrossNER | Average |" in table
    assert "| Model | Emo. | FPB | Average |" in table and "| `tpl` |" in table
    # a rerun finds every result already there and trains nothing
    result = run_command(eval_command(output, *models), cwd=REPO_ROOT)
    assert "resuming, 6 results already there" in result.stderr and "NER offline" not in result.stderr
    assert len(load_results(output / "results.json")) == 6


def test_missing_dataset_is_recorded_not_averaged(tmp_path):
    output = tmp_path / "eval"
    args = ["--model", TINY, "--ner_datasets", "conll2003", "--tc_tasks", "Patent", "--ner_data_root", str(tmp_path)]
    result = run_command([*eval_command(output), *args], cwd=REPO_ROOT)
    assert "MISSING ner conll2003" in result.stderr and "MISSING tc PatentClassification" in result.stderr
    payload = json.loads((output / "results.json").read_text())
    assert payload["results"] == [] and {m["dataset"] for m in payload["missing"]} == {
        "conll2003",
        "PatentClassification",
    }
    assert "## Not evaluated" in (output / "results.md").read_text()


def test_suite_overrides_and_names():
    settings = suite_settings("quick", fractions=[0.1], ner={"epochs": 2.0, "max_train_sentences": None})
    assert settings.fractions == [0.1] and settings.ner.epochs == 2.0
    assert settings.ner.max_train_sentences == SUITES["quick"].ner.max_train_sentences
    assert SUITES["paper"].ner.learning_rate == 2e-5 and SUITES["paper"].ner.epochs == 30
    assert tc_column("Banking77Classification") == tc_column("Bank.") == "Bank."
    assert merge_repeated(["--model", "a", "--suite", "x", "--model", "b", "c"], "--model") == [
        "--model",
        "a",
        "b",
        "c",
        "--suite",
        "x",
    ]


def test_resume_refuses_results_of_another_protocol(tmp_path):
    SuiteRun(SUITES["smoke"], tmp_path).save()
    SuiteRun(SUITES["smoke"], tmp_path)  # same protocol: resumes
    with pytest.raises(ValueError, match=r"results.json: its ner protocol has epochs=1, this run epochs=3"):
        SuiteRun(suite_settings("smoke", ner={"epochs": 3}), tmp_path)
    payload = json.loads((tmp_path / "results.json").read_text())
    del payload["suite"]["ner"]["min_steps_per_epoch"]  # saved before the field existed: read as its default (0)
    (tmp_path / "results.json").write_text(json.dumps(payload))
    SuiteRun(SUITES["smoke"], tmp_path)
    with pytest.raises(ValueError, match="min_steps_per_epoch=0, this run min_steps_per_epoch=20"):
        SuiteRun(suite_settings("smoke", ner={"min_steps_per_epoch": 20}), tmp_path)


def saved_run(folder, model: str, config_hash: str, value: float, settings=SUITES["smoke"]) -> SuiteRun:
    run = SuiteRun(settings, folder, command=f"mtpf-eval --model {model}")
    run.models.append({"model": model, "path": model, "config_hash": config_hash, "slots": []})
    run.records.append(ResultRecord(model, "ner", "crossner", "test", "f1", value, config_hash=config_hash))
    run.runs.append({"model": model, "dataset": "crossner", "seconds": 1.0})
    run.save()
    return run


def test_merge_combines_folders_evaluated_in_parallel(tmp_path):
    saved_run(tmp_path / "a", "base", "h0", 50.0)
    saved_run(tmp_path / "b", "pf_ner", "h1", 40.0)
    merge_results(tmp_path / "a", [tmp_path / "a", tmp_path / "b", tmp_path / "b"], command="python -m mtpf merge")
    payload = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [(r["model"], r["value"]) for r in payload["results"]] == [("base", 50.0), ("pf_ner", 40.0)]
    assert [m["model"] for m in payload["models"]] == ["base", "pf_ner"] and len(payload["runs"]) == 2
    merge_results(tmp_path / "c", [tmp_path / "b", tmp_path / "a"], order=["base"])
    assert [m["model"] for m in json.loads((tmp_path / "c" / "results.json").read_text())["models"]] == [
        "base",
        "pf_ner",
    ]
    assert payload["suite"]["command"] == "python -m mtpf merge"
    assert payload["suite"]["previous_commands"] == ["mtpf-eval --model base", "mtpf-eval --model pf_ner"]
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| `pf_ner` | 40.0 |" in table and "    mtpf-eval --model pf_ner\n    python -m mtpf merge\n" in table


def test_merge_refuses_unlike_scores(tmp_path):
    saved_run(tmp_path / "a", "base", "h0", 50.0)
    saved_run(tmp_path / "same-label-other-weights", "base", "h9", 50.0)
    saved_run(tmp_path / "other-score", "base", "h0", 51.0)
    saved_run(tmp_path / "other-protocol", "x", "h1", 1.0, suite_settings("smoke", ner={"epochs": 3}))
    with pytest.raises(ValueError, match="'base' has config hash h9, but h0"):
        merge_results(tmp_path / "out", [tmp_path / "a", tmp_path / "same-label-other-weights"])
    with pytest.raises(ValueError, match=r"scores 51\.0 there and 50\.0"):
        merge_results(tmp_path / "out", [tmp_path / "a", tmp_path / "other-score"])
    with pytest.raises(ValueError, match="epochs=3, this run epochs=1"):
        merge_results(tmp_path / "out", [tmp_path / "a", tmp_path / "other-protocol"])
    with pytest.raises(FileNotFoundError, match=r"nothing/results\.json: no results to merge"):
        merge_results(tmp_path / "out", [tmp_path / "a", tmp_path / "nothing"])


def test_truncated_results_file_stops_the_run_with_its_name(tmp_path):
    from mtpf.results import ResultsSchemaError

    (tmp_path / "results.json").write_text('{"schema": "mtpf-results/1", "suite": {"name": "smoke"}, "resu')
    with pytest.raises(ResultsSchemaError, match=r"results\.json: not a readable JSON results file"):
        SuiteRun(SUITES["smoke"], tmp_path)
