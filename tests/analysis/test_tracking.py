import json

from mtpf.analysis.plot import plot_curves
from mtpf.analysis.tracking import AnalysisSet, measure_slots
from tests.conftest import REPO_ROOT, SHARED_DIR, build_smoke_trainer, mtpf_command, randomize_lora, run_command

CONLL_TEST = str(SHARED_DIR / "data/ner/conll2003/iob2/test.txt")


def test_callback_records_every_slot_and_plot(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(
        tmp_path,
        pseudo_label_cache,
        "--max_steps",
        "4",
        "--analysis_steps",
        "2",
        "--analysis_sentences",
        "30",
        "--analysis_data",
        CONLL_TEST,
        "--save_strategy",
        "no",
    )
    trainer.train()
    record = json.loads((tmp_path / "interference.json").read_text())
    assert record["label"] == "mtpf_tpl"
    assert [entry["step"] for entry in record["history"]] == [0, 2, 4]
    for entry in record["history"]:
        assert set(entry["slots"]) == {"base", "ner", "tc"}
        for metrics in entry["slots"].values():
            assert -1 <= metrics["perturbed_similarity"] <= 1 and -1 <= metrics["token_homogeneity"] <= 1
    png = plot_curves([tmp_path / "interference.json"], tmp_path / "fig3.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measuring_restores_the_active_slot_and_flags(tmp_path, pseudo_label_cache):
    trainer = build_smoke_trainer(tmp_path, pseudo_label_cache, "--max_steps", "1", "--save_strategy", "no")
    encoder = trainer.model.encoder
    randomize_lora(encoder)
    encoder.train()
    flags = {n: p.requires_grad for n, p in encoder.named_parameters()}
    active = encoder.active_adapter
    results = measure_slots(encoder, trainer.processing_class, AnalysisSet.from_conll(CONLL_TEST, sentences=20))
    assert results["ner"] != results["tc"] != results["base"]
    assert encoder.active_adapter == active and encoder.training
    assert flags == {n: p.requires_grad for n, p in encoder.named_parameters()}


def test_analyze_cli_on_a_release_and_an_encoder(tmp_path, pseudo_label_cache):
    from mtpf.training import export
    from mtpf.training.args import DataArguments

    trainer = build_smoke_trainer(tmp_path / "run", pseudo_label_cache, "--max_steps", "1", "--save_strategy", "no")
    release = export(trainer, DataArguments(release_dir=str(tmp_path / "release")))
    command = mtpf_command(
        "analyze",
        "--models",
        str(release),
        "offline:tiny-bert",
        "--output",
        str(tmp_path / "out"),
        "--data",
        CONLL_TEST,
        "--sentences",
        "20",
    )
    run_command(command, REPO_ROOT)
    models = json.loads((tmp_path / "out" / "analysis.json").read_text())["models"]
    assert set(models[str(release)]) == {"base", "ner", "tc"} and set(models["offline:tiny-bert"]) == {"base"}
