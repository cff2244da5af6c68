"""One backbone ONNX for every app, each app one small onnxruntime LoRA adapter file (the paper's deployment).

    python -m mtpf export RELEASE --shared APP [APP ...] [--slot tc] --output DIR [--quantize int8]

`DIR/backbone.onnx` is the release's backbone with a LoRA branch on every module any app adapts, whose A and B
matrices are graph inputs (`lora.<module>.A` [rank, in], `lora.<module>.B` [out, rank], the PEFT scale folded into
B), and a linear head whose weight and bias are inputs too (`head.weight` [labels, hidden], `head.bias` [labels];
the number of labels is dynamic). It has three outputs: `token_logits` (NER), `sentence_logits` (classification)
and `sentence_embedding` (normalised, for a slot such as `tc`); an app reads the one of its task.

`DIR/adapters/<name>.onnx_adapter` holds one app's LoRA and head in onnxruntime's adapter format
(`onnxruntime.AdapterFormat`); a device loads it with `onnxruntime.LoraAdapter` and activates it per run with
`RunOptions.add_active_adapter`, so N apps cost one backbone file + N small files. Modules an app does not adapt
get zero matrices, and ranks are zero-padded to the largest, which changes nothing in the product.
Every app is checked against its own merged PyTorch model on its test sentences, and the graph with no adapter
against the plain backbone (`base`), in each precision (`export_report.json`). An int8 graph that fails any check is
quantised again with more of it kept in fp32 (`int8_fallbacks`: the FFN output projections, then the last layer too,
the single-app export's rule), and each verdict is the last try's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from mtpf.export.onnx import (
    Exportable,
    ExportError,
    accepted,
    fidelity,
    int8_fallbacks,
    nodes_of_modules,
    quantize_down_the_ladder,
)
from mtpf.io import atomic_directory, atomic_write_text, check_output_folder

logger = logging.getLogger(__name__)

SHARED_REPORT = "export_report.json"
PEFT_PREFIX = "base_model.model."
# The graph's three outputs, by what reads them (a slot reads the embedding; an app kind names its own output).
BASE = "base"  # the report's entry for the graph with no adapter: the plain backbone
OUTPUTS = {"ner": "token_logits", "classification": "sentence_logits", "embedding": "sentence_embedding"}


def output_of(task: str) -> str:
    """The graph output an app of this kind (or `embedding`, a slot) reads."""
    if task == "embedding":
        return OUTPUTS["embedding"]
    from mtpf.apps import get_app_kind

    return get_app_kind(task).onnx_output


@dataclass
class SharedApp:
    """One app of the shared export: its LoRA (module -> A, scaled B), its head, and its PyTorch reference."""

    name: str
    task: str  # ner, classification or embedding
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    head: tuple[torch.Tensor, torch.Tensor] | None
    reference: Exportable


def read_lora(adapter_dir: str | os.PathLike) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], tuple | None]:
    """A PEFT LoRA folder as {module: (A, B * alpha / r)} plus its saved head (weight, bias) if it has one."""
    from mtpf.apps import saved_head

    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        raise ExportError(f"{folder}: rsLoRA, DoRA and per-module ranks are not supported by the shared export.")
    scale = float(config["lora_alpha"]) / float(config["r"])
    saved = load_file(str(folder / "adapter_model.safetensors"))
    tensors = {key.removeprefix(PEFT_PREFIX): value for key, value in saved.items()}
    lora = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            lora[module] = (a.float(), tensors[f"{module}.lora_B.weight"].float() * scale)
    return lora, saved_head(saved)


class _Feed:
    """The LoRA matrices of the current call, handed from the graph's inputs to the modules that use them."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class _LoraInput(nn.Module):
    """A frozen linear plus a LoRA branch whose A and B come from the graph's inputs."""

    def __init__(self, base: nn.Linear, name: str, feed: _Feed) -> None:
        super().__init__()
        self.base, self.name, self.feed = base, name, feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.feed.tensors[self.name]
        return self.base(x) + (x @ a.t()) @ b.t()


class SharedGraph(nn.Module):
    """Backbone + LoRA inputs on `modules` + a head given as inputs; three outputs (see the module docstring)."""

    def __init__(self, backbone: nn.Module, modules: list[str]) -> None:
        super().__init__()
        self.backbone, self.modules_with_lora, self.feed = backbone, modules, _Feed()
        for name in modules:
            parent, _, child = name.rpartition(".")
            owner = backbone.get_submodule(parent)
            setattr(owner, child, _LoraInput(getattr(owner, child), name, self.feed))

    def forward(self, input_ids, attention_mask, head_weight, head_bias, lora: list[torch.Tensor]):
        self.feed.tensors = {name: (lora[2 * i], lora[2 * i + 1]) for i, name in enumerate(self.modules_with_lora)}
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        sentence = outputs.pooler_output
        token_logits = outputs.last_hidden_state @ head_weight.t() + head_bias
        return token_logits, sentence @ head_weight.t() + head_bias, sentence


def input_names(modules: list[str]) -> list[str]:
    return [
        "input_ids",
        "attention_mask",
        "head.weight",
        "head.bias",
        *[f"lora.{m}.{part}" for m in modules for part in ("A", "B")],
    ]


def zero_lora(graph: SharedGraph, module: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A [rank, in] and B [out, rank] of zeros for `module`: the shapes of its LoRA inputs, adapting nothing."""
    linear = graph.backbone.get_submodule(module).base
    return torch.zeros(rank, linear.in_features), torch.zeros(linear.out_features, rank)


def app_inputs(app: SharedApp, modules: list[str], graph: SharedGraph, rank: int) -> dict[str, np.ndarray]:
    """The app's values of every LoRA and head input: zero where it adapts nothing, ranks zero-padded."""
    values = {}
    hidden = graph.backbone.config.hidden_size
    weight, bias = app.head or (torch.zeros(1, hidden), torch.zeros(1))
    values["head.weight"], values["head.bias"] = weight.numpy(), bias.numpy()
    for module in modules:
        a, b = zero_lora(graph, module, rank)
        if module in app.lora:
            app_a, app_b = app.lora[module]
            a[: app_a.shape[0]], b[:, : app_b.shape[1]] = app_a, app_b
        values[f"lora.{module}.A"], values[f"lora.{module}.B"] = a.numpy(), b.numpy()
    return values


def export_graph(graph: SharedGraph, modules: list[str], rank: int, shared: SharedSource, path: Path) -> None:
    tokenizer, max_length = shared.tokenizer, shared.max_length
    example = tokenizer(["a short example", "and a second, longer example sentence"], padding=True, return_tensors="pt")
    hidden = graph.backbone.config.hidden_size
    lora = [matrix for module in modules for matrix in zero_lora(graph, module, rank)]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max_length)
    labels = torch.export.Dim("labels")
    dims = ({0: batch, 1: sequence}, {0: batch, 1: sequence}, {0: labels}, {0: labels}, [None] * len(lora))
    args = (example["input_ids"], example["attention_mask"], torch.zeros(2, hidden), torch.zeros(2), lora)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=input_names(modules),
            output_names=list(OUTPUTS.values()),
            dynamic_shapes=dims,
            dynamo=True,
            external_data=False,
        )
    give_defaults(
        path, {"head.weight": args[2][:1], "head.bias": args[3][:1]} | dict(zip(input_names(modules)[4:], lora))
    )


def give_defaults(path: Path, defaults: dict[str, torch.Tensor]) -> None:
    """Zero initializers for the LoRA and head inputs, which makes them optional: onnxruntime's Python API refuses
    a run whose feeds lack a required input even when the active adapter supplies it, and without an adapter the
    graph runs as the plain backbone."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    model.graph.initializer.extend(numpy_helper.from_array(v.numpy(), name) for name, v in defaults.items())
    onnx.save(model, str(path))


def write_adapter(values: dict[str, np.ndarray], path: Path) -> Path:
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(
        {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value)) for name, value in values.items()}
    )
    adapter.export_adapter(str(path))
    return path


def graph_session(backbone: Path):
    """An onnxruntime session over a shared backbone graph (one per graph: every app's adapter runs on it)."""
    import onnxruntime as ort

    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # the LoRA inputs' default initializers are meant to be overridden: no warning
    return ort.InferenceSession(str(backbone), quiet, providers=["CPUExecutionProvider"])


def adapter_runner(session, adapter: Path | None, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Run a shared backbone's `session` with one app's adapter file active (None: no adapter, the plain backbone);
    returns the app's output."""
    import onnxruntime as ort

    options, lora = ort.RunOptions(), None
    if adapter is not None:
        lora = ort.LoraAdapter()
        lora.Load(str(adapter))
        options.add_active_adapter(lora)  # keeps a raw pointer: `lora` must outlive every run, hence `keep` below

    def run(feeds: dict[str, np.ndarray], keep: object = lora) -> np.ndarray:
        return session.run([output], feeds, options)[0]

    return run


@dataclass
class SharedSource:
    """What one shared export is made of: the release's plain backbone and tokenizer, each app (and slot) with its LoRA
    and PyTorch reference, and the release it came from."""

    backbone: nn.Module
    tokenizer: object
    apps: list[SharedApp]
    source: str = ""
    base: Exportable | None = None  # the plain backbone's embedding: what the graph with no adapter must give

    @property
    def max_length(self) -> int:
        """The longest input any of its apps reads (the graph's sequence bound)."""
        return max((app.reference.max_length for app in self.apps), default=256)


def export_shared(
    shared: SharedSource, output: str | os.PathLike, *, quantize: str | None = None, overwrite: bool = False
) -> Path:
    """Write DIR/backbone.onnx (+ backbone.int8.onnx), DIR/adapters/<app>.onnx_adapter and the fidelity report."""
    apps, tokenizer, source = shared.apps, shared.tokenizer, shared.source
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: only int8 is supported.")
    if not apps:
        raise ExportError("--shared: name at least one app (or --slot).")
    names = [app.name for app in apps]
    if len(set(names)) != len(names):
        raise ExportError(f"--shared: app names must differ, got {names}.")
    output = check_output_folder(output, overwrite, SHARED_REPORT, "an export", ExportError)
    modules = sorted({module for app in apps for module in app.lora})
    rank = max(a.shape[0] for app in apps for a, _ in app.lora.values()) if modules else 1
    graph = SharedGraph(shared.backbone, modules).eval()
    with atomic_directory(output) as staging:
        export_graph(graph, modules, rank, shared, staging / "backbone.onnx")
        (staging / "adapters").mkdir()
        adapters = {
            app.name: write_adapter(
                app_inputs(app, modules, graph, rank), staging / "adapters" / f"{app.name}.onnx_adapter"
            )
            for app in apps
        }
        report = {
            "source": source,
            "inputs": input_names(modules)[:2],
            "outputs": OUTPUTS,
            "rank": rank,
            "lora_modules": modules,
            "backbones": {"backbone.onnx": {"precision": "fp32"}},
            "base": {},
            "apps": {app.name: app_entry(app, adapters[app.name]) for app in apps},
        }
        checks = {"backbone.onnx": check_graph(shared, staging / "backbone.onnx", adapters, int8=False)}
        if quantize == "int8":
            report["backbones"]["backbone.int8.onnx"] = {"precision": "int8"}
            checks["backbone.int8.onnx"] = quantize_checked(shared, staging, adapters, report)
        for name, verdicts in checks.items():
            report["backbones"][name]["megabytes"] = _megabytes(staging / name)
            for entry_name, verdict in verdicts.items():
                entry = report["base"] if entry_name == BASE else report["apps"][entry_name]
                entry[name] = verdict
                logger.info("shared export, %s on %s: %s", entry_name, name, verdict)
        atomic_write_text(staging / SHARED_REPORT, json.dumps(report, indent=2) + "\n")
        tokenizer.save_pretrained(str(staging / "tokenizer"))
    return output


def app_entry(app: SharedApp, adapter: Path) -> dict:
    return {
        "task": app.task,
        "output": output_of(app.task),
        "adapter": f"adapters/{adapter.name}",
        "adapter_megabytes": _megabytes(adapter),
        "id2label": {str(k): v for k, v in app.reference.id2label.items()},
    }


def check_graph(shared: SharedSource, graph: Path, adapters: dict[str, Path], int8: bool) -> dict[str, dict]:
    """{`base` and every app: its fidelity on `graph`, with the verdict}: the plain backbone with no adapter, each
    app with its own adapter file active."""
    runs = [(BASE, shared.base, None, OUTPUTS["embedding"])] if shared.base is not None else []
    runs += [(app.name, app.reference, adapters[app.name], output_of(app.task)) for app in shared.apps]
    session, verdicts = graph_session(graph), {}
    for name, reference, adapter, output in runs:
        check = fidelity(reference, adapter_runner(session, adapter, output))
        verdicts[name] = {**check, "accepted": accepted(check, int8=int8)}
    return verdicts


def quantize_checked(shared: SharedSource, staging: Path, adapters: dict[str, Path], report: dict) -> dict[str, dict]:
    """backbone.int8.onnx, checked; while anything fails, quantised again down `int8_fallbacks` (each refused try's
    failures kept in the report)."""
    fp32, int8 = staging / "backbone.onnx", staging / "backbone.int8.onnx"
    fallbacks = int8_fallbacks(shared.backbone.config, scope="backbone.")  # under SharedGraph's backbone
    tries = quantize_down_the_ladder(
        fp32,
        int8,
        ((step, nodes_of_modules(fp32, prefixes)) for step, prefixes in fallbacks),
        lambda: check_graph(shared, int8, adapters, int8=True),
        lambda verdicts: not _refused(verdicts),
    )
    step, kept, verdicts = tries[-1]
    refused_tries = [{"kept_fp32": rung, "refused": _refused(checks)} for rung, _, checks in tries[:-1]]
    report["backbones"][int8.name] |= {"kept_fp32": step, "nodes_kept_fp32": kept, "refused_tries": refused_tries}
    return verdicts


def _refused(verdicts: dict[str, dict]) -> list[str]:
    return sorted(name for name, verdict in verdicts.items() if not verdict["accepted"])


def _megabytes(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


def shared_apps(
    release: str, app_dirs: list[str], slots: list[str], texts: list[str], sentences: int = 200
) -> SharedSource:
    """The release's plain backbone, its tokenizer, and each app (and slot) with its LoRA and PyTorch reference.

    An app must have been trained on this very backbone (its `mtpf_base.json` digest), or its LoRA means nothing.
    """
    from mtpf.apps import AppError, check_app_backbone, read_app
    from mtpf.export.onnx import exportable_app, exportable_slot
    from mtpf.models import load_model
    from mtpf.release import BACKBONE_DIR, backbone_digest

    loaded = load_model(release)
    backbone_dir = Path(release) / BACKBONE_DIR
    digest = backbone_digest(backbone_dir)
    apps = []
    for app_dir in app_dirs:
        app = read_app(app_dir)
        try:
            check_app_backbone(app_dir, digest, backbone_dir)
        except AppError as err:
            raise ExportError(str(err)) from err
        lora, head = read_lora(app_dir)
        reference = exportable_app(app_dir, str(backbone_dir), sentences)
        apps.append(SharedApp(Path(app_dir).name, app["task"], lora, head, reference))
    for slot in slots:
        if slot not in loaded.adapters:
            raise ExportError(f"{release}: no trained slot {slot!r}; it has {sorted(loaded.adapters)}.")
        lora, _ = read_lora(loaded.adapters[slot])
        apps.append(SharedApp(slot, "embedding", lora, None, exportable_slot(release, slot, texts)))
    if not texts:
        raise ExportError("--shared: give check sentences (--texts): the graph with no adapter is checked on them.")
    base = exportable_slot(release, None, texts)
    return SharedSource(loaded.fresh_backbone().eval(), loaded.tokenizer, apps, release, base)
