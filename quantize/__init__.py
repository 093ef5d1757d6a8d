"""Quantization: QuantSpec, the bit-exact emulator, calibration of LeNets and of imported models.

``from_torch(module, example_input, preset="q8")`` and ``from_onnx(path, preset="q8")`` turn a
user's float CNN into a QuantSpec (:mod:`quantize.importer`); they load lazily, so importing
``quantize.qformat`` stays light.
"""
from __future__ import annotations

__all__ = ["from_onnx", "from_torch"]


def __getattr__(name):
    if name in __all__:
        from . import importer

        return getattr(importer, name)
    raise AttributeError(f"module 'quantize' has no attribute {name!r}")
