"""The NER app kind: a tagger whose LoRA starts from the release's `ner` slot, trained by the very protocol
`mtpf-eval` scores (`mtpf.evaluation.ner.train_ner`), so an app's test F1 is the number the suite reports."""

from __future__ import annotations

from dataclasses import asdict

from mtpf.apps.kinds import AppKind, TrainedApp, register_app_kind
from mtpf.data.roots import NER_DATA
from mtpf.evaluation.ner import DOWNSTREAM, NerProtocol, train_ner
from mtpf.evaluation.ner_data import check_label_sets, load_ner_spec
from mtpf.training.downstream import subsample


def train_tagger(loaded, data: str, data_root: str, protocol: NerProtocol, seed: int) -> TrainedApp:
    name, splits = load_ner_spec(data, data_root)
    labels = check_label_sets(splits, name)
    run, model = train_ner(loaded, name, splits, labels, protocol, seed=seed)
    scores = {"test_f1": run.test_f1, "dev_f1": run.dev_f1, "best_epoch": run.best_epoch}
    return TrainedApp(DOWNSTREAM, model, name, labels, scores, asdict(run))


def tagger_test_texts(app: dict, sentences: int) -> tuple[list[str], list]:
    """The first `sentences` (seeded) test sentences, as texts and as the tagged sentences (gold)."""
    gold = subsample(load_ner_spec(app["data"], app.get("data_root") or NER_DATA)[1]["test"], 1.0, sentences)
    return [" ".join(s.tokens) for s in gold], gold


NER_KIND = register_app_kind(
    AppKind(
        name="ner",
        protocol=NerProtocol,
        data_root=NER_DATA,
        train=train_tagger,
        test_texts=tagger_test_texts,
        head_class="MtpfForTokenClassification",
        slot="ner",
        onnx_output="token_logits",
        endpoint="ner",
        pipeline_tag="token-classification",
        label_kind="Entity types",
        score_rows=(("test", "seqeval entity F1 (strict IOB2)", "test_f1"), ("dev", "seqeval entity F1", "dev_f1")),
        pipeline_options={"aggregation_strategy": "first"},  # words tagged by their first sub-token, as trained
    )
)
