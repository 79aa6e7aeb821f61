#!/usr/bin/env bash
# cli_bad_input.sh - the CLI fails cleanly on bad input: a one-line message that names the problem,
# a non-zero exit code, no crash (exit codes >= 128 mean a signal).
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/support/cli_lib.sh"

printf 'not a model' >"$tmp/text.gguf"
head -c 100 "$model" >"$tmp/trunc.gguf"
head -c 3000000 "$model" >"$tmp/cut.gguf"
: >"$tmp/empty.gguf"

expect no-command 2 'usage' -- "$bin"
expect unknown-command 2 "unknown command 'frobnicate'" -- "$bin" frobnicate
expect inspect-missing 1 'nope.gguf.*No such file' -- "$bin" inspect -m "$tmp/nope.gguf"
expect inspect-not-gguf 1 'not a GGUF' -- "$bin" inspect -m "$tmp/text.gguf"
expect inspect-empty 1 'empty.gguf' -- "$bin" inspect -m "$tmp/empty.gguf"
expect inspect-truncated 1 'trunc.gguf' -- "$bin" inspect -m "$tmp/trunc.gguf"
expect inspect-cut-data 1 'cut.gguf.*outside the file|cut.gguf.*truncat' -- "$bin" inspect -m "$tmp/cut.gguf"
expect inspect-bad-option 2 "unknown option '--bogus'" -- "$bin" inspect --bogus
expect set-unknown-key 2 'nosuchkey' -- "$bin" inspect --set runtime.nosuchkey=1
expect set-bad-value 2 'threads' -- "$bin" inspect --set runtime.threads=many
expect config-missing 2 'missing.ini' -- "$bin" inspect --config "$tmp/missing.ini"
expect inspect-ok 0 'layers +30' -- "$bin" inspect -m "$model"
expect print-config 0 '\[compression\]' -- "$bin" inspect --print-config

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
