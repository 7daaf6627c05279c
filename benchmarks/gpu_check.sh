#!/usr/bin/env bash
# The whole GPU check: training speed of (a) ppl_vae, (e) its eager loop, (b) a hand-written
# PyTorch VAE and (c) Pyro SVI with a DataLoader, on CUDA, for MNIST and digits, both likelihoods.
#
#     bash benchmarks/gpu_check.sh          # from the repository root, after `make install`
#
# Prints the device, then train_speed.py's lines; record them in BENCHMARKS.md ("GPU").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-../.venv/bin/python}
"$PY" -c "import sys, torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else sys.exit('no CUDA device: the GPU check needs one'))"
"$PY" train_speed.py --device cuda --epochs "${EPOCHS:-5}"
