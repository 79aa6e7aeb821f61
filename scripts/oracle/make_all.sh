#!/usr/bin/env bash
# Regenerates every llama.cpp / numpy oracle fixture, in the order other work depends on them:
# build the oracle (idempotent), tokenizer fixtures, logits fixtures, numpy fp32 reference
# (validated against llama.cpp's logits; a top-1 disagreement fails the script).
# Usage: scripts/oracle/make_all.sh   (from anywhere; paths are relative to the repository)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/root/.cache/spindle/oracle-venv/bin/python

"$HERE/build_llama.sh"
t0=$(date +%s); "$PY" "$HERE/make_token_fixtures.py";       echo "tokenizer fixtures: $(( $(date +%s) - t0 )) s"
t0=$(date +%s); "$PY" "$HERE/make_logit_fixtures.py";       echo "logits fixtures: $(( $(date +%s) - t0 )) s"
t0=$(date +%s); "$PY" "$HERE/numpy_forward.py" --validate;  echo "numpy reference: $(( $(date +%s) - t0 )) s"
