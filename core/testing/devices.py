"""A torch mode that makes CPU-only assumptions fail on CPU.

On a CPU-only machine a tensor made without ``device=`` lands where every other tensor is,
so code that forgets the engine's device passes every test and breaks on the first GPU
(``torch.cat`` of a CUDA and a CPU tensor). Under ``StrictDevices`` such a call raises
instead, naming the function; host tensors made on purpose say ``device="cpu"``.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors


class ImplicitDeviceError(AssertionError):
    """A tensor factory was called without naming its device."""


def _is_tensor_data(data: object) -> bool:
    return isinstance(data, torch.Tensor)


class StrictDevices(TorchFunctionMode):
    """Refuse tensor factories (``torch.tensor``, ``arange``, ``zeros``, ...) without ``device=``.

    ``torch.as_tensor`` of an existing tensor keeps that tensor's device and is allowed.
    ``calls`` counts the factory calls seen, so a test can show the mode was active.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self._constructors = _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in self._constructors:
            self.calls += 1
            implicit = kwargs.get("device") is None
            if func is torch.as_tensor and args and _is_tensor_data(args[0]):
                implicit = False
            if implicit:
                raise ImplicitDeviceError(
                    f"torch.{getattr(func, '__name__', func)} called without device=: on a GPU "
                    "this tensor would be on the CPU; pass the engine's device (or "
                    "device='cpu' for a host tensor made on purpose)"
                )
        return func(*args, **kwargs)
