"""`python -m mtpf <command>`: command-line entry points."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from configuration_mtpf import DEFAULT_TASKS
from mtpf.data.roots import NER_DATA, TC_DATA, DataSources
from mtpf.errors import MtpfError


@dataclass
class InitArguments:
    """Create an initial release (backbone + identity task slots) from any encoder."""

    backbone: str = field(metadata={"help": "Local folder, Hub id or offline:NAME of a BERT-like encoder."})
    output: str = field(metadata={"help": "Release folder to write (OUT/backbone, OUT/adapters/<task>)."})
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS), metadata={"help": "Slot names."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a release already at --output."})


def run_init(argv: list[str]) -> None:
    from mtpf.release import init_release
    from mtpf.training.args import SlotArguments

    args, slots = HfArgumentParser((InitArguments, SlotArguments)).parse_args_into_dataclasses(args=argv)
    path = init_release(args.backbone, args.output, tasks=args.tasks, overwrite=args.overwrite, **slots.slot_kwargs())
    print(f"Release written to {path}")


def run_build_teacher(argv: list[str]) -> None:
    from mtpf.teacher import main as teacher_main

    teacher_main(argv)


def run_info(argv: list[str]) -> None:
    """Print a release's slots and parameter counts: `python -m mtpf info OUT`."""
    from mtpf.release import release_summary

    if len(argv) != 1:
        raise SystemExit("usage: python -m mtpf info RELEASE_DIR")
    summary = release_summary(argv[0])
    print(f"backbone: {summary['backbone_parameters']:,} parameters ({summary['model_type']})")
    for task, slot in summary["slots"].items():
        share = slot["parameters"] / summary["backbone_parameters"]
        print(
            f"slot {task}: {slot['parameters']:,} parameters ({share:.2%} of the backbone), r={slot['r']}, "
            f"alpha={slot['lora_alpha']}, layers {slot['layers']}, {'+'.join(slot['target_modules'])}, "
            f"{'trained' if slot.get('trained') else 'untrained'}"
        )


def run_analyze(argv: list[str]) -> None:
    from mtpf.analysis.plot import plot_curves
    from mtpf.analysis.tracking import AnalyzeArguments, analyze_models

    (args,) = HfArgumentParser(AnalyzeArguments).parse_args_into_dataclasses(args=argv)
    if not args.models and not args.curves:
        raise SystemExit("mtpf analyze: give --models and/or --curves")
    if args.models:
        path = analyze_models(args)
        print(f"Metrics written to {path}")
    if args.curves:
        print(f"Plot written to {plot_curves(args.curves, f'{args.output}/interference.png')}")


def run_clusters(argv: list[str]) -> None:
    from mtpf.analysis.clusters import ClusterArguments, cluster_quality

    (args,) = HfArgumentParser(ClusterArguments).parse_args_into_dataclasses(args=argv)
    if not args.models:
        raise SystemExit("mtpf clusters: give --models")
    path = cluster_quality(args)
    print(f"Cluster quality written to {path}")


@dataclass
class EvalArguments:
    """Downstream evaluation suite (paper Sec. 3 and appendices A, C, D) over one or more models."""

    model: list[str] = field(
        metadata={
            "help": "Release folders or encoders (folder, Hub id, offline:NAME), LABEL=PATH to name one; repeatable."
        }
    )
    output: str = field(metadata={"help": "Folder for results.json and results.md (a rerun resumes)."})
    suite: str = field(default="quick", metadata={"help": "smoke (CI), quick (about 1 CPU hour), paper (GPU)."})
    ner_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Override the suite's NER datasets: local names, NAME=DIR user data, or hf://ID[:CONFIG]."},
    )
    tc_tasks: list[str] | None = field(default=None, metadata={"help": "Override the TC tasks (column or MTEB name)."})
    fractions: list[float] | None = field(default=None, metadata={"help": "Override the NER training fractions."})
    seeds: list[int] | None = field(default=None, metadata={"help": "Override the NER training seeds."})
    ner_epochs: float | None = field(default=None, metadata={"help": "Override the joint NER epochs."})
    ner_warmup_epochs: float | None = field(default=None, metadata={"help": "Override the head-only NER epochs."})
    ner_max_train_sentences: int | None = field(default=None, metadata={"help": "Override the NER train cap."})
    ner_min_steps_per_epoch: int | None = field(
        default=None, metadata={"help": "Override the minimum optimizer steps per NER epoch (0: the paper's)."}
    )
    tc_n_experiments: int | None = field(default=None, metadata={"help": "Override MTEB's probe repetitions."})
    skip_ner: bool = field(default=False, metadata={"help": "Run only text classification."})
    skip_tc: bool = field(default=False, metadata={"help": "Run only NER."})
    workers: int = field(
        default=1,
        metadata={
            "help": "Evaluate in N processes, each on its share of the cores: one job per (model, NER dataset) and "
            "one TC job per model, merged into --output at the end."
        },
    )
    ner_data_root: str = field(default=NER_DATA, metadata={"help": "Local NER datasets."})
    tc_data_root: str = field(default=TC_DATA, metadata={"help": "Local TC datasets."})


def merge_repeated(argv: list[str], flag: str) -> list[str]:
    """`--model A --model B` means `--model A B` (argparse would keep only the last)."""
    values, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
        else:
            rest.append(argv[i])
            i += 1
    return [flag, *values, *rest] if values else rest


def run_eval(argv: list[str]) -> None:
    from huggingface_hub import constants

    from mtpf.evaluation.suite import SuiteRun
    from mtpf.evaluation.suites import suite_settings, tc_column

    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=merge_repeated(argv, "--model"))
    settings = suite_settings(
        args.suite,
        ner_datasets=args.ner_datasets,
        tc_tasks=[tc_column(t) for t in args.tc_tasks] if args.tc_tasks else None,
        fractions=args.fractions,
        seeds=args.seeds,
        ner={
            "epochs": args.ner_epochs,
            "warmup_epochs": args.ner_warmup_epochs,
            "max_train_sentences": args.ner_max_train_sentences,
            "min_steps_per_epoch": args.ner_min_steps_per_epoch,
        },
        tc={"n_experiments": args.tc_n_experiments},
    )
    command = " ".join(["mtpf-eval", *argv])
    sources = DataSources(args.ner_data_root, args.tc_data_root, hub_reachable=not constants.HF_HUB_OFFLINE)
    if args.workers > 1:
        from mtpf.evaluation.parallel import Workers, evaluate_in_parallel

        families = tuple(family for family, skip in (("ner", args.skip_ner), ("tc", args.skip_tc)) if not skip)
        workers = Workers(args.workers, command, families, sources)
        path = evaluate_in_parallel(args.model, settings, args.output, workers)
    else:
        run = SuiteRun(settings, args.output, sources, command)
        path = run.run(args.model, ner=not args.skip_ner, tc=not args.skip_tc)
    from mtpf.evaluation.tables import score_lines

    print("\n".join(score_lines(json.loads(path.read_text(encoding="utf-8")))))
    print(f"Results written to {path} and {path.with_suffix('.md')}")


def run_finetune(argv: list[str]) -> None:
    from mtpf.apps import FinetuneArguments, finetune_app, get_app_kind

    if argv and not argv[0].startswith("-"):  # the release may come first, positionally
        argv = ["--release", argv[0], *argv[1:]]
    task_only = argparse.ArgumentParser(add_help=False)
    task_only.add_argument("--task", default="ner")
    kind = get_app_kind(task_only.parse_known_args(argv)[0].task)  # it decides which protocol's options exist
    parser = HfArgumentParser((FinetuneArguments, kind.protocol))
    args, protocol = parser.parse_args_into_dataclasses(args=argv)
    if args.ner_data_root or args.tc_data_root:
        logging.getLogger(__name__).warning("--ner_data_root/--tc_data_root are deprecated: use --data_root.")
    path = finetune_app(args, protocol)
    print(f"App written to {path}")


@dataclass
class ExportArguments:
    """Export an app or a release's slot as ONNX (fp32, optionally int8) with its measured fidelity."""

    source: str = field(metadata={"help": "An app folder (mtpf finetune) or a release folder (with --slot/--shared)."})
    output: str = field(metadata={"help": "Folder for model.onnx, model.int8.onnx, export_report.json, tokenizer/."})
    slot: str | None = field(
        default=None, metadata={"help": "Release: the slot merged into the encoder (e.g. tc); with --shared, added."}
    )
    shared: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Release: app folders for one shared backbone.onnx + one onnxruntime adapter file per app "
            "(and per --slot)."
        },
    )
    quantize: str | None = field(default=None, metadata={"help": "int8: also a dynamically quantised graph."})
    backbone: str | None = field(
        default=None, metadata={"help": "App: its backbone folder (default: the recorded one)."}
    )
    texts: str = field(
        default=f"{TC_DATA}/banking77/test.jsonl",
        metadata={"help": "Release: JSON-lines file with a 'text' field, the sentences the check embeds."},
    )
    sentences: int = field(default=200, metadata={"help": "Sentences compared against PyTorch."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an export already at --output."})


def run_export(argv: list[str]) -> None:
    from pathlib import Path

    from mtpf.export import export, exportable_app, exportable_slot
    from mtpf.io import read_json_lines

    if argv and not argv[0].startswith("-"):
        argv = ["--source", argv[0], *argv[1:]]
    at = argv.index("--shared") if "--shared" in argv else -1
    bare_shared = at >= 0 and (at + 1 == len(argv) or argv[at + 1].startswith("--"))  # no apps: the slot(s) alone
    if bare_shared:
        argv = argv[:at] + argv[at + 1 :]
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)

    def check_texts() -> list[str]:
        rows = [row for _, row in read_json_lines(Path(args.texts), ValueError)][: args.sentences]
        return [row["text"] for row in rows]

    if args.shared or bare_shared:
        from mtpf.export.shared import export_shared, shared_apps

        slots = [args.slot] if args.slot else []
        texts = check_texts()  # the slot's and the bare backbone's (`base`) check sentences
        shared = shared_apps(args.source, args.shared, slots, texts, args.sentences)
        path = export_shared(shared, args.output, quantize=args.quantize, overwrite=args.overwrite)
        print(f"Shared export written to {path}")
        return
    if (Path(args.source) / "mtpf_app.json").is_file():
        exportable = exportable_app(args.source, args.backbone, args.sentences)
    else:
        exportable = exportable_slot(args.source, args.slot, check_texts())
    path = export(exportable, args.output, quantize=args.quantize, overwrite=args.overwrite, source=args.source)
    print(f"Export written to {path}")


def run_serve(argv: list[str]) -> None:
    from mtpf.serve.server import ServeArguments, serve

    if argv and not argv[0].startswith("-"):  # the release may come first, positionally
        argv = ["--release", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=merge_repeated(argv, "--app"))
    serve(args)


@dataclass
class InterpolateArguments:
    """A release whose backbone is interpolated towards its base: (1 − α)·base + α·trained (WiSE-FT), slots kept."""

    release: str = field(metadata={"help": "The pre-finetuned release folder."})
    output: str = field(metadata={"help": "Folder for the new release."})
    alpha: float = field(metadata={"help": "Weight of the trained backbone: 1 keeps the release, 0 gives the base."})
    base: str | None = field(
        default=None, metadata={"help": "The base encoder (default: the one the release records it started from)."}
    )
    layer_alphas: list[float] | None = field(
        default=None, metadata={"help": "One α per position instead: the embeddings, then each layer."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a release already at --output."})


def run_interpolate(argv: list[str]) -> None:
    from mtpf.interpolation import Interpolation, interpolate_release

    if argv and not argv[0].startswith("-"):  # the release may come first, positionally
        argv = ["--release", argv[0], *argv[1:]]
    (args,) = HfArgumentParser(InterpolateArguments).parse_args_into_dataclasses(args=argv)
    interpolation = Interpolation(args.alpha, args.layer_alphas, args.base)
    path = interpolate_release(args.release, args.output, interpolation, overwrite=args.overwrite)
    print(f"Release written to {path}")


@dataclass
class MergeArguments:
    """Combine results folders of one suite, e.g. models evaluated by parallel processes or on other machines."""

    output: str = field(metadata={"help": "Folder for the combined results.json/md (may already hold results)."})
    folders: list[str] = field(default_factory=list, metadata={"help": "Results folders to add."})
    order: list[str] | None = field(
        default=None, metadata={"help": "Models to list first, in this order (gains are against the first)."}
    )


def run_merge(argv: list[str]) -> None:
    from mtpf.evaluation.store import merge_results

    (args,) = HfArgumentParser(MergeArguments).parse_args_into_dataclasses(args=argv)
    command = " ".join(["python -m mtpf merge", *argv])
    path = merge_results(args.output, args.folders, command=command, order=args.order)
    print(f"Results written to {path} and {path.with_suffix('.md')}")


def eval_cli() -> None:
    """Console script `mtpf-eval`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mteb").setLevel(logging.WARNING)  # per-experiment chatter; our own log names each task
    run_reporting_user_errors("mtpf-eval", run_eval, sys.argv[1:])


USER_ERRORS = (MtpfError, ValueError, OSError)  # a bad file, field, folder or value: the message says which


def run_reporting_user_errors(name: str, command, argv: list[str]) -> None:
    """Run a command; a user error is one line on stderr and exit status 2, its traceback only with `--debug`.
    Anything else (a bug) keeps its traceback."""
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        command(argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{name}: error: {err}  (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


COMMANDS = {
    "init": run_init,
    "build-teacher": run_build_teacher,
    "info": run_info,
    "analyze": run_analyze,
    "clusters": run_clusters,
    "eval": run_eval,
    "merge": run_merge,
    "interpolate": run_interpolate,
    "finetune": run_finetune,
    "export": run_export,
    "serve": run_serve,
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m mtpf {{{','.join(COMMANDS)}}} [--help] [--debug]")
    run_reporting_user_errors(f"mtpf {argv[0]}", COMMANDS[argv[0]], argv[1:])
