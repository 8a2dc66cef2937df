"""Linear operators on torch tensors: ``forward``, ``adjoint``, ``.H``, ``.gram``, ``@``.

Subclasses implement ``_forward`` and ``_adjoint``; the public methods check shapes. Operators
act on the trailing dimensions given by ``ishape``/``oshape`` and broadcast over any leading
batch dimensions, so one operator serves a single image or a batch of posterior samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Shape = tuple[int, ...]


class LinearOperator:
    """A linear map between complex tensors of trailing shapes ``ishape`` -> ``oshape``."""

    def __init__(self, ishape: Shape, oshape: Shape, name: str | None = None) -> None:
        self.ishape = tuple(int(s) for s in ishape)
        self.oshape = tuple(int(s) for s in oshape)
        self.name = name or type(self).__name__

    # -- subclass interface -------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public interface ---------------------------------------------------------------------
    @staticmethod
    def _check(t: torch.Tensor, shape: Shape, what: str, name: str) -> None:
        if tuple(t.shape[t.ndim - len(shape) :]) != shape or t.ndim < len(shape):
            raise ValueError(
                f"{name}.{what}: expected trailing shape {shape}, got {tuple(t.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator: ``y = A x``."""
        self._check(x, self.ishape, "forward", self.name)
        return self._forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint: ``x = Aᴴ y``."""
        self._check(y, self.oshape, "adjoint", self.name)
        return self._adjoint(y)

    __call__ = forward

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator Aᴴ."""
        return AdjointOperator(self)

    @property
    def gram(self) -> LinearOperator:
        """The normal operator AᴴA."""
        return GramOperator(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)

    def __repr__(self) -> str:
        return f"{self.name}({self.ishape} -> {self.oshape})"


class AdjointOperator(LinearOperator):
    """Aᴴ of a given operator."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.oshape, op.ishape, name=f"{op.name}ᴴ")
        self.op = op

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:
        return self.op


class GramOperator(LinearOperator):
    """AᴴA; operators may override ``_gram`` with a faster fused form."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.ishape, op.ishape, name=f"{op.name}ᴴ{op.name}")
        self.op = op

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.op, "_gram", None)
        return fused(x) if fused is not None else self.op.adjoint(self.op.forward(x))

    _adjoint = _forward


class ComposedOperator(LinearOperator):
    """A @ B."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        if a.ishape != b.oshape:
            raise ValueError(f"cannot compose {a!r} @ {b!r}: {a.ishape} != {b.oshape}")
        super().__init__(b.ishape, a.oshape, name=f"{a.name}@{b.name}")
        self.a, self.b = a, b

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.forward(self.b.forward(x))

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.b.adjoint(self.a.adjoint(y))


class FunctionOperator(LinearOperator):
    """An operator from a pair of callables (forward, adjoint)."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        adjoint: Callable[[torch.Tensor], torch.Tensor],
        ishape: Shape,
        oshape: Shape,
        name: str = "FunctionOperator",
    ) -> None:
        super().__init__(ishape, oshape, name=name)
        self._f, self._a = forward, adjoint

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._f(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._a(y)


def power_iteration(
    op: LinearOperator,
    iterations: int = 30,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.complex64,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of ``op`` (assumed Hermitian PSD, e.g. ``A.gram``) by power iteration."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(op.ishape, dtype=dtype, generator=g).to(device)
    x = x / torch.linalg.vector_norm(x)
    lam = 0.0
    for _ in range(iterations):
        y = op.forward(x)
        lam = float(torch.linalg.vector_norm(y))
        if lam == 0.0:
            return 0.0
        x = y / lam
    return lam
