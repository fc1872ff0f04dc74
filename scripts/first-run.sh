#!/usr/bin/env bash
# What a new user pays on the first run, old against new, each from an empty target directory:
# the README's demo command, then the README's CLI command right after it, the library with
# default features, and `cargo tree -e normal -p rampart` (default features). Prints crates
# compiled ("Compiling" lines) and wall time of each.
#
# Usage: scripts/first-run.sh OLD_REV [NEW_REV]     (NEW_REV defaults to the work tree)
#
# Run it on a quiet machine: timings are only comparable within one run. Each tree is a fresh
# `git archive` in a temporary directory; downloads are done first (`cargo fetch`) so that
# they are not timed. RUSTC_WRAPPER (sccache) is unset so that nothing comes from a cache;
# set FIRST_RUN_KEEP_WRAPPER=1 to keep it (crate counts stay right, times do not).
set -euo pipefail
old_rev=${1:?usage: scripts/first-run.sh OLD_REV [NEW_REV]}
new_rev=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/rampart-first-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ "${FIRST_RUN_KEEP_WRAPPER:-0}" = 1 ] || unset RUSTC_WRAPPER
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR
export CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never

checkout() { # REV DIR: the tree at REV (or the work tree, tracked files, if REV is empty)
  mkdir -p "$2"
  if [ -n "$1" ]; then
    git -C "$repo" archive "$1" | tar -x -C "$2"
  else
    git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 tar -c) | tar -x -C "$2"
  fi
}

# timed LABEL CMD...: runs CMD in the current directory, prints crates compiled and seconds.
timed() {
  local label=$1; shift
  local log start end
  log=$(mktemp "$work/log.XXXXXX")
  start=$(date +%s.%N)
  if ! "$@" >"$log.out" 2>"$log"; then
    echo "FAILED: $*" >&2; tail -n 20 "$log" >&2; return 1
  fi
  end=$(date +%s.%N)
  printf '  %-58s %4d crates  %7.1f s\n' "$label" "$(grep -c '^ *Compiling ' "$log" || true)" \
    "$(awk "BEGIN { print $end - $start }")"
}

measure() { # NAME REV
  local dir="$work/$1"
  checkout "$2" "$dir"
  cd "$dir"
  echo "== $1 (${2:-work tree})"
  cargo fetch --locked -q
  local demo cli
  if [ -d crates/rampart-demo ]; then
    demo=(cargo run --locked -p rampart-demo)
    cli=(cargo run --locked -p rampart-cli -- dlq list --limit 3)
  else
    demo=(cargo run --locked --release --example gemini_tts)
    cli=(cargo run --locked -p rampart-cli -- dlq list --limit 3)
  fi
  timed "demo: ${demo[*]}" "${demo[@]}"
  timed "then: ${cli[*]}" "${cli[@]}"
  rm -rf target
  timed "library: cargo build -p rampart (default features)" cargo build --locked -p rampart
  printf '  %-58s %4d crates\n' "cargo tree -e normal -p rampart (default features)" \
    "$(cargo tree --locked -e normal -p rampart --prefix none | sed 's/ (\*)$//' | sort -u | wc -l)"
  cd "$repo"
  rm -rf "$dir"
}

measure old "$old_rev"
measure new "$new_rev"
