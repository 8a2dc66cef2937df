"""Classical baselines: zero-filled coil combination and CG-SENSE (Tikhonov)."""

from __future__ import annotations

from typing import Literal

import torch

from mrprior.mr.fft import ifftc
from mrprior.mr.linop import LinearOperator
from mrprior.recon.cg import Callback, conjugate_gradient
from mrprior.recon.problem import ReconProblem


def zero_filled(problem: ReconProblem, combine: Literal["sense", "rss"] = "sense") -> torch.Tensor:
    """Zero-filled reconstruction ``[ky, kx]`` (``[B, ky, kx]`` for a batch of planes, complex64).

    ``combine="sense"``: the coil-combined adjoint ``Aᴴy = Σ_c conj(S_c) · Fᴴ y_c`` with the
    problem's coil maps (normalized maps make this the matched-filter combination).
    ``combine="rss"``: root-sum-of-squares ``sqrt(Σ_c |Fᴴ y_c|²)`` (no maps needed, real-valued,
    returned as complex64 with zero phase).
    """
    y = problem.kspace * problem.mask.to(problem.kspace.dtype).unsqueeze(-3)
    coil_images = ifftc(y, 2)
    if combine == "rss":
        return torch.sqrt((coil_images.abs() ** 2).sum(dim=-3)).to(torch.complex64)
    if combine != "sense":
        raise ValueError(f"combine must be 'sense' or 'rss': {combine!r}")
    if problem.csm is None:
        raise ValueError("zero_filled(combine='sense') needs coil maps (problem.csm is None)")
    return (coil_images * problem.csm.conj()).sum(dim=-3)


def cg_sense(
    A: LinearOperator,
    y: torch.Tensor,
    lam: float = 0.0,
    max_iterations: int = 30,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """CG-SENSE with Tikhonov regularization.

    Solves ``argmin_x ||A x - y||² + lam ||x||²`` via the normal equations
    ``(AᴴA + lam I) x = Aᴴ y`` by conjugate gradients (Pruessmann et al., MRM 46:638, 2001).

    Parameters
    ----------
    A : forward operator (e.g. :class:`mrprior.mr.sense.SenseOperator`), image -> k-space.
    y : k-space ``[*batch, *A.oshape]``.
    lam : Tikhonov weight (>= 0), in the units of the data (no rescaling).
    max_iterations, tol, x0, callback : see :func:`mrprior.recon.cg.conjugate_gradient`.

    Returns
    -------
    torch.Tensor
        image ``[*batch, *A.ishape]``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0: {lam}")
    rhs = A.adjoint(y)
    gram = A.gram

    def normal(x: torch.Tensor) -> torch.Tensor:
        g = gram.forward(x)
        return g + lam * x if lam else g

    return conjugate_gradient(
        normal,
        rhs,
        x0=x0,
        max_iterations=max_iterations,
        tol=tol,
        callback=callback,
        batch_ndim=rhs.ndim - len(A.ishape),
    )
