"""Capturing a module's features (activations) during a callback's own forward passes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def last_linear_name(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` in registration order: usually the classifier head."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


class FeatureCapture:
    """Keeps the features of one module while ``capturing`` is on, a no-op otherwise.

    With ``of_input=True`` the module's input is captured (the penultimate features when the
    module is the classifier head), else its output. Features are detached; :meth:`take` flattens
    them to ``(N, D)`` per example, :meth:`take_rows` keeps the last dimension for one row per
    position. The hook stays registered for the whole fit, so it exists before the first forward
    (hooks added later are missed by an already compiled module), and costs one attribute test
    per forward while off.
    """

    def __init__(self) -> None:
        self.capturing = False
        self.chunks: list[Tensor] = []
        self._handle: RemovableHandle | None = None

    def attach(self, model: nn.Module, name: str, of_input: bool) -> None:
        modules = dict(model.named_modules())
        if name not in modules:
            available = [n for n in modules if n][-8:]
            raise ValueError(
                f"feature_module={name!r} is not a submodule of {type(model).__name__}; some "
                f"of its submodules: {available}."
            )
        self.detach()
        module = modules[name]
        if of_input:
            self._handle = module.register_forward_pre_hook(self._keep_input)
        else:
            self._handle = module.register_forward_hook(self._keep_output)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _keep(self, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"the feature module must produce a tensor; got {type(value)}.")
        self.chunks.append(value.detach())

    def _keep_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.capturing:
            self._keep(args[0])

    def _keep_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.capturing:
            self._keep(output)

    def take(self) -> Tensor:
        """Every captured feature since the last call, as one ``(N, D)`` float tensor."""
        return torch.cat([c.reshape(c.shape[0], -1) for c in self._taken()]).float()

    def take_rows(self) -> Tensor:
        """The captured features as they came (``(N, D)``, ``(N, T, D)`` ...), one float tensor."""
        return torch.cat(self._taken()).float()

    def _taken(self) -> list[Tensor]:
        chunks, self.chunks = self.chunks, []
        if not chunks:
            raise RuntimeError("the feature module did not run during the probe forward pass.")
        return chunks
