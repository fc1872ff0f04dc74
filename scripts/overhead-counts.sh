#!/usr/bin/env bash
# Instructions per successful call of every overhead-bench case, both harness shapes, counted
# by callgrind (deterministic: the machine's load does not change them), and the issue-12
# goals as ratios of those counts. Also the allocations per call (a native run).
#
# Usage: scripts/overhead-counts.sh [N]      (N calls; default 100000)
#        OVERHEAD_BIN=path/to/overhead_counts scripts/overhead-counts.sh   (a saved build)
#
# Instructions per call = (Ir of 2N calls − Ir of N calls) / N, so the process's setup cancels.
# An instruction count is not a time: an atomic read-modify-write or a clock read counts as one
# instruction (a clock read is a syscall under valgrind and counts for almost nothing), so the
# counts favour code that does those; compare with criterion's wall time (BENCHMARKS.md).
set -euo pipefail
n=${1:-100000}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
bin=${OVERHEAD_BIN:-}
if [ -z "$bin" ]; then
  bin=$target/release/examples/overhead_counts
  (cd "$repo" && cargo build --release -q -p rampart-bench --example overhead_counts)
fi

ir() { # CASE SHAPE N -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 >/dev/null |
    awk '/Collected :/ { print $NF }'
}

declare -A per
printf '%-34s %12s %12s %16s %16s\n' case in_place async_fn allocs/call_in allocs/call_async
for c in $("$bin" list); do
  for s in in_place async_fn; do
    a=$(ir "$c" "$s" "$n")
    b=$(ir "$c" "$s" $((2 * n)))
    per[$c,$s]=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
  done
  al_in=$("$bin" "$c" in_place "$n" | awk '{ print $NF }')
  al_as=$("$bin" "$c" async_fn "$n" | awk '{ print $NF }')
  printf '%-34s %12s %12s %16s %16s\n' "$c" "${per[$c,in_place]}" "${per[$c,async_fn]}" "$al_in" "$al_as"
done

ratio() { # LABEL A B [SUBTRACT]: A / B (with SUBTRACT, (A - S) / (B - S): added cost)
  for s in in_place async_fn; do
    local a=${per[$2,$s]} b=${per[$3,$s]} z=0
    [ -n "${4:-}" ] && z=${per[$4,$s]}
    printf '%s' "$(awk -v a="$a" -v b="$b" -v z="$z" 'BEGIN { printf "%.2f", (a - z) / (b - z) }')"
    [ "$s" = in_place ] && printf ' / '
  done
}
diff_ins() { # A - B
  for s in in_place async_fn; do
    awk -v a="${per[$1,$s]}" -v b="${per[$2,$s]}" 'BEGIN { printf "%+.1f", a - b }'
    [ "$s" = in_place ] && printf ' / '
  done
}

echo
echo "goal (in_place / async_fn)"
echo "retry no budget − tower Retry (instructions; goal ≤ +1 ns):  $(diff_ins rampart_retry_no_budget tower_retry)"
echo "retry + budget ÷ tower + TpsBudget (goal < 0.2):             $(ratio x rampart_retry_budget tower_retry_tps_budget)"
echo "  added over bare:                                           $(ratio x rampart_retry_budget tower_retry_tps_budget bare)"
echo "retry + budget not full ÷ tower + TpsBudget (goal < 0.2):    $(ratio x rampart_retry_budget_not_full tower_retry_tps_budget)"
echo "  added over bare:                                           $(ratio x rampart_retry_budget_not_full tower_retry_tps_budget bare)"
echo "consecutive ÷ recloser (goal ≤ 0.8):                         $(ratio x rampart_consecutive recloser)"
echo "consecutive ÷ failsafe consecutive (goal ≤ 0.8):             $(ratio x rampart_consecutive failsafe_consecutive)"
echo "count window ÷ recloser (goal ≤ 1):                          $(ratio x rampart_count_window recloser)"
echo "Policy ÷ tower retry+TpsBudget+timeout (goal ≤ 3):           $(ratio x rampart_policy tower_retry_budget_timeout)"
echo "  added over bare:                                           $(ratio x rampart_policy tower_retry_budget_timeout bare)"
echo "Policy ÷ tower-resilience retry∘breaker (goal ≤ 0.1):        $(ratio x rampart_policy tower_resilience_retry_breaker)"
echo "  added over bare:                                           $(ratio x rampart_policy tower_resilience_retry_breaker bare)"
echo "Policy cloned per request ÷ tower stack cloned per request:   $(ratio x rampart_policy_per_request tower_retry_budget_timeout_per_request)"
