#!/usr/bin/env bash
# Regenerates every llama.cpp / numpy oracle fixture, in the order other work depends on them:
# build the oracle (idempotent), tokenizer fixtures, logits fixtures, numpy fp32 reference
# (validated against llama.cpp's logits; a top-1 disagreement fails the script), then the Qwen2.5
# fixtures for the Qwen models in the cache.
# Usage: scripts/oracle/make_all.sh   (from anywhere; paths are relative to the repository)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${SPINDLE_CACHE:-$HOME/.cache/spindle}/oracle-venv/bin/python

"$HERE/build_llama.sh"
t0=$(date +%s); "$PY" "$HERE/make_token_fixtures.py";       echo "tokenizer fixtures: $(( $(date +%s) - t0 )) s"
t0=$(date +%s); "$PY" "$HERE/make_logit_fixtures.py";       echo "logits fixtures: $(( $(date +%s) - t0 )) s"
t0=$(date +%s); "$PY" "$HERE/numpy_forward.py" --validate;  echo "numpy reference: $(( $(date +%s) - t0 )) s"
# Qwen2.5 fixtures for the models present (scripts/setup.sh --model qwen2.5-0.5b|qwen2.5-1.5b)
t0=$(date +%s); "$PY" "$HERE/make_qwen_fixtures.py";        echo "qwen fixtures: $(( $(date +%s) - t0 )) s"
