#!/usr/bin/env bash
# Set everything up (first run only) and run the whole test suite on CPU.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
