# cli_lib.sh - shared by the tests/cli_*.sh scripts (sourced, not run): pass/fail counters and the
# `expect` check of one command's exit code and output.
fails=0; passes=0

fail() { echo "FAIL $1"; fails=$((fails + 1)); }

# expect NAME EXPECTED_EXIT PATTERN -- command...
# Runs the command with stdin from /dev/null; passes when it exits with EXPECTED_EXIT and its
# stdout+stderr matches the extended regex PATTERN.
expect() {
  local name=$1 want=$2 pattern=$3
  shift 4
  local out rc
  out=$("$@" 2>&1 </dev/null); rc=$?
  if [ "$rc" -ne "$want" ] || ! grep -qE -- "$pattern" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $want), output:"; echo "$out" | head -5
    [ "$(wc -l <<<"$out")" -gt 5 ] && { echo "..."; echo "$out" | tail -5; }
    fails=$((fails + 1))
  else
    passes=$((passes + 1))
  fi
}
