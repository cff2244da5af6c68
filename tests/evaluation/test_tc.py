import json

import numpy as np
import pytest

from mtpf.evaluation.tc import (
    TC_TASKS,
    TcDataError,
    TcProtocol,
    build_task,
    evaluate_tc,
    local_dataset,
    proportional_rows,
    read_jsonl_split,
)
from mtpf.models import load_model
from tests.conftest import SHARED_DIR, TINY

TC_ROOT = SHARED_DIR / "data" / "tc"
FAST = TcProtocol(n_experiments=3, max_eval_rows=300, max_length=64)


def test_every_local_task_reads_with_mteb_settings():
    for column, spec in TC_TASKS.items():
        if spec.folder is None:
            continue
        data = local_dataset(spec, TC_ROOT)
        assert set(data) == {spec.train_split, *spec.eval_splits}, column
        task = build_task(spec, TC_ROOT, FAST)
        assert task.metadata.name == spec.mteb_name and task.n_experiments == 3
    assert build_task(TC_TASKS["Emo."], TC_ROOT, FAST).samples_per_label == 16  # MTEB's override kept
    assert build_task(TC_TASKS["TS"], TC_ROOT, FAST).samples_per_label == 32
    assert len(local_dataset(TC_TASKS["FPB"], TC_ROOT)["train"]) == 2264  # MTEB v1: one split, all rows


def test_bad_rows_are_named_by_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": 3, "label": "b"}\n', encoding="utf-8")
    with pytest.raises(TcDataError, match=r"train\.jsonl:2: expected an object"):
        read_jsonl_split(path)
    path.write_text('{"text": "fine", "label": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(TcDataError, match=r"train\.jsonl:2: not valid JSON"):
        read_jsonl_split(path)


def test_proportional_rows_keep_label_shares():
    labels = [0] * 90 + [1] * 9 + [2]
    rows = proportional_rows(labels, 20, seed=0)
    picked = np.asarray(labels)[rows]
    assert len(rows) == 20 and (picked == 0).sum() == 18 and (picked == 1).sum() == 2
    assert rows == proportional_rows(labels, 20, seed=0)


def test_mteb_task_runs_offline_and_separates_random_from_real_encoder():
    scores = {}
    for name in (TINY, "offline:minilm-l6"):
        records, missing = evaluate_tc(load_model(name), ["Emo.", "Patent"], FAST, TC_ROOT)
        assert [m["dataset"] for m in missing] == ["PatentClassification"]  # not local, Hub offline: recorded
        (record,) = records
        assert record.dataset == "EmotionClassification" and record.split == "test" and record.metric == "accuracy"
        scores[name] = record.value
    assert scores["offline:minilm-l6"] > scores[TINY] + 5, scores


def test_tc_slot_changes_the_embeddings(slotted_release):
    candidate = load_model(str(slotted_release))
    plain = load_model(TINY)
    records = evaluate_tc(candidate, ["FPB"], FAST, TC_ROOT)[0]
    assert records[0].config_hash == candidate.config_hash != plain.config_hash
    inputs = candidate.tokenizer(["a tc slot is merged in"], return_tensors="pt")
    with_slot = candidate.encoder_for("tc")(**inputs).pooler_output
    without = plain.encoder_for("tc")(**inputs).pooler_output  # a plain encoder has no slot: the backbone itself
    assert not np.allclose(with_slot.detach().numpy(), without.detach().numpy())


# sentence-transformers/all-MiniLM-L6-v2 on the public MTEB leaderboard (mteb 1.12 results), EmotionClassification.
PUBLIC_EMOTION_ACCURACY = 40.83


def test_untouched_minilm_scores_its_public_mteb_emotion_number(tmp_path):
    """`mtpf-eval --suite paper` on the untouched encoder = the public MTEB score = plain mteb with
    SentenceTransformer on the same local files, experiment by experiment (same few-shot draws)."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from mtpf.weights import packaged_encoder_dir
    from tests.conftest import REPO_ROOT, run_command

    output = tmp_path / "parity"
    command = ["mtpf-eval", "--model", "offline:minilm-l6", "--suite", "paper", "--skip_ner", "--tc_tasks", "Emo."]
    result = run_command([*command, "--tc_data_root", str(TC_ROOT), "--output", str(output)], REPO_ROOT)
    assert "Emo. test  accuracy 40.83" in result.stdout
    (ours,) = json.loads((output / "results.json").read_text())["results"]
    assert abs(ours["value"] - PUBLIC_EMOTION_ACCURACY) <= 0.05, ours["value"]

    reference_model = SentenceTransformer(str(packaged_encoder_dir("minilm-l6")), device="cpu")
    task = build_task(TC_TASKS["Emo."], TC_ROOT, TcProtocol())
    (reference,) = mteb.evaluate(reference_model, [task], cache=None, show_progress_bar=False).task_results
    experiments = [100 * e["accuracy"] for e in reference.scores["test"][0]["scores_per_experiment"]]
    np.testing.assert_allclose(ours["experiments"], experiments, atol=1e-3)
