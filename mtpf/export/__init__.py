"""Device export: ONNX graphs of an app or a release slot, fp32 and int8, with measured fidelity (`onnx.py`)."""

from mtpf.export.onnx import REPORT, ExportError, export, exportable_app, exportable_slot

__all__ = ["REPORT", "ExportError", "export", "exportable_app", "exportable_slot"]
