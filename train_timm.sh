#!/usr/bin/env bash
# Train with timm's own train.py and timm-ssm's models: ./train_timm.sh --help
# No arguments: the default run (a small SSM model on Fashion-MNIST, trained, evaluated, results printed).
# The work is done by timm_ssm/train_timm.py, run with this repository's timm_ssm on the path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v python >/dev/null 2>&1; then python=python; else python=python3; fi
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export TIMM_SSM_PROG="${TIMM_SSM_PROG:-$0}"  # the name its messages give
# exec: the Python process takes this one's place, so SIGTERM and SIGHUP sent to train_timm.sh reach it
exec "$python" -m timm_ssm.train_timm "$@"
