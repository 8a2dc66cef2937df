"""mrprior: MRI reconstruction regularized by generative, pretrained image priors."""

import os

__version__ = "0.1.0"

#: spin count of torch's OpenMP threads (libgomp) at a barrier before they sleep, set when the
#: user set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` (libgomp's default spins ≈ 30× longer).
#: A spinning thread holds a core that other processes need: on the 2-core machine beside two busy
#: loops, ℓ1's many small operations ran 22× slower (the demo's ℓ1 74 s instead of 3.3 s); with
#: this spin count 4.6–7.6 s, at a cost of ≈ 0.3 s of ℓ1's 2.2 s on a quiet machine and nothing
#: measurable on prior-PICS (benchmarks/RESULTS.md, stop 21).
#: Takes effect when ``mrprior`` is imported before torch, as in every entry point of the package.
OMP_SPIN_COUNT = "10000"

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OMP_SPIN_COUNT)
