"""Cancellation: the token, its per-thread scope, and the checks in the hot loops."""

from __future__ import annotations

import threading

import pytest
import torch

from mrprior.cancellation import Cancelled, CancelToken, cancel_scope, check_cancelled
from mrprior.recon.cg import conjugate_gradient


def test_token_scope_is_per_thread() -> None:
    token = CancelToken()
    token.cancel("peer gone")
    token.cancel("second reason is ignored")
    seen: list[BaseException | None] = []

    def other_thread() -> None:  # no token here: never cancelled
        try:
            check_cancelled()
            seen.append(None)
        except Cancelled as exc:
            seen.append(exc)

    with cancel_scope(token):
        with pytest.raises(Cancelled, match="peer gone"):
            check_cancelled()
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    check_cancelled()  # scope left: nothing current
    assert seen == [None]
    assert token.cancelled and token.reason == "peer gone"


def test_cg_stops_at_the_next_iteration() -> None:
    """Cancelled from another thread mid-solve (here: the callback), CG raises at once."""
    n = 64
    a = torch.randn(n, n, dtype=torch.float64)
    spd = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    token = CancelToken()
    iterations: list[int] = []

    def callback(it: int, x: torch.Tensor) -> bool:
        iterations.append(it)
        if it == 2:
            token.cancel("test")
        return False

    with cancel_scope(token), pytest.raises(Cancelled):
        conjugate_gradient(lambda x: spd @ x, b, max_iterations=50, tol=0.0, callback=callback)
    assert iterations == [0, 1, 2]
    x = conjugate_gradient(lambda x: spd @ x, b, max_iterations=200, tol=1e-10)  # no token: runs
    assert torch.allclose(spd @ x, b, atol=1e-6)


def test_network_prior_call_checks_the_token() -> None:
    from mrprior.priors import load

    prior = load("complex", device="cpu")
    x = torch.zeros(1, 16, 16, dtype=torch.complex64)
    token = CancelToken()
    token.cancel("server shutting down")
    with cancel_scope(token), pytest.raises(Cancelled, match="shutting down"):
        prior.denoise(x, 0.1)
    assert prior.denoise(x, 0.1).shape == x.shape
