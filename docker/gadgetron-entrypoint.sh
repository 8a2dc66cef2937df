#!/bin/bash
# Entry point of the mrprior Gadgetron image (docker/Dockerfile.gadgetron).
#
# Activates Gadgetron's conda environment as the official image's entry point does, then puts
# mrprior's Python 3.11 environment first on PATH: Gadgetron starts an external Python node as
# `python -m gadgetron <port> <module> <target>` with the first `python` on PATH, and that one
# must have mrprior installed (Gadgetron's own environment has Python 3.10). All arguments go
# to `gadgetron` (default: listen on port 9002).
set -eo pipefail

# shellcheck disable=SC1091
. /opt/conda/etc/profile.d/conda.sh
conda activate gadgetron
export PATH="${MRPRIOR_ENV:-/opt/conda/envs/mrprior}/bin:${PATH}"

exec gadgetron "$@"
