#!/usr/bin/env bash
# Install rkd_ext with its test extras and run the test suite.
# torch 2.13.0 is installed only where no torch is present; an existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install torch==2.13.0
python -m pip install ninja setuptools wheel
python -m pip install --no-build-isolation -e ".[test]"
python -m rkd_ext.info
python -m pytest python_tests -q "$@"
