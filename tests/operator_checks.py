"""Shared checks run over every linear operator (adjointness, linearity, gram)."""

from __future__ import annotations

import torch

from mrprior.mr.linop import LinearOperator


def random_complex(shape, seed=0):
    """Seeded complex64 standard normal noise of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.complex64, generator=g)


def check_adjoint(op: LinearOperator, rtol: float = 1e-5) -> None:
    """<Ax, y> == <x, Aᴴy> to float32 precision."""
    x, y = random_complex(op.ishape, 1), random_complex(op.oshape, 2)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) <= rtol * max(abs(lhs), abs(rhs)), (lhs, rhs)


def check_linear(op: LinearOperator, rtol: float = 1e-5) -> None:
    x1, x2 = random_complex(op.ishape, 3), random_complex(op.ishape, 4)
    a = 0.3 - 1.7j
    lhs = op.forward(a * x1 + x2)
    rhs = a * op.forward(x1) + op.forward(x2)
    assert torch.linalg.vector_norm(lhs - rhs) <= rtol * torch.linalg.vector_norm(rhs) * 10


def check_gram(op: LinearOperator, rtol: float = 1e-5) -> None:
    x = random_complex(op.ishape, 5)
    g = op.gram.forward(x)
    ref = op.adjoint(op.forward(x))
    assert torch.linalg.vector_norm(g - ref) <= rtol * torch.linalg.vector_norm(ref) * 10


def check_operator(op: LinearOperator) -> None:
    check_adjoint(op)
    check_linear(op)
    check_gram(op)
