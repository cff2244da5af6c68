"""Device export: ONNX graphs of an app or a release slot, fp32 and int8, with measured fidelity (`onnx.py`), and
one shared backbone graph with an onnxruntime LoRA adapter file per app (`shared.py`)."""

from mtpf.export.onnx import REPORT, ExportError, export, exportable_app, exportable_slot
from mtpf.export.shared import export_shared, shared_apps

__all__ = ["REPORT", "ExportError", "export", "export_shared", "exportable_app", "exportable_slot", "shared_apps"]
