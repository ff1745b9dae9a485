#!/bin/sh
# Every figure of issue 19's table, before and after, in one go (about 12-15 min on the 2-core
# machine): same-load pairs from alternating runs of two builds under this tree's bench.
#
#   bench/run-issue19.sh BEFORE_BINARY [OUT_DIR]
#
# BEFORE_BINARY is a hubrelay built from the "before" commit, e.g.
#   git worktree add /tmp/before 76365af && (cd /tmp/before && go build -o /tmp/hubrelay-before ./cmd/hubrelay)
# The "after" binary is built from this tree, and this tree's bench drives both builds
# (-compare, -exe), so both see the same load generator, sinks and accounting. Throughput: one
# run of ROUNDS rounds in which every hubrelay target runs from both builds back to back, next
# to the round's reference; each check is the median of its rounds' ratios. The outages run
# before, then after. On a loaded machine everything takes 2-3x longer (the outages most).
#
# Environment: ROUNDS (throughput rounds, default 2), OUTAGE_CHANGES (default 1000000; 0
# skips the outages), DEDUP_KEYS (dedup growth curve, default "0 1000000 4000000"; "" skips
# it; 10M takes ~5 min more, 100M hours), BEFORE_SRC (a checkout of the before commit with
# relay/spool/dedupscale_test.go copied in: its curve too), DURATION (phase length, default
# 5s). sh reads a script as it runs: copy it elsewhere before editing it during a run.
set -eu

before=${1:?usage: bench/run-issue19.sh BEFORE_BINARY [OUT_DIR]}
out=${2:-/tmp/issue19-$(date -u +%Y%m%dT%H%M%SZ)}
rounds=${ROUNDS:-2}
outage=${OUTAGE_CHANGES:-1000000}
dedupkeys=${DEDUP_KEYS-0 1000000 4000000}
duration=${DURATION:-5s}
root=$(cd "$(dirname "$0")/.." && pwd)

mkdir -p "$out"
before=$(cd "$(dirname "$before")" && pwd)/$(basename "$before")
after=$out/hubrelay-after
(cd "$root" && go build -o "$after" ./cmd/hubrelay)
echo "after: $(cd "$root" && git describe --always --dirty), before: $before" | tee "$out/builds.txt"
start=$(date +%s)

stamp() { echo "$(date -u +%H:%M:%S) $1: $(cat /proc/loadavg)" | tee -a "$out/load.txt"; }

bin() { if [ "$1" = before ]; then echo "$before"; else echo "$after"; fi; }

# Throughput: the references' fsync target, hubrelay with its sinks down (ingest alone),
# hubrelay with two unbatched http sinks (CPU per change) and with sink batching (delivered/s
# at 50 changes/POST), c=32 with 1 and 50 changes/POST. One run, ROUNDS rounds; in each, every
# hubrelay target runs from both builds back to back (-compare), next to the round's reference.
stamp "throughput, $rounds rounds, before ([compare]) and after"
nice -n 5 "$after" bench -q -compare "$before" -rounds "$rounds" -duration "$duration" -concurrency 32 -batch-changes 50 \
	-targets reference-fsync,hubrelay-sinks-down,hubrelay,hubrelay-batch -json >"$out/throughput.json"

# The backlog: OUTAGE_CHANGES posted with both sinks answering 503 (sink batching on, as in
# BENCHMARKS.md's run G), peak RSS of the relay.
if [ "$outage" -gt 0 ]; then
	for side in before after; do
		stamp "outage $side"
		nice -n 5 "$after" bench -q -exe "$(bin $side)" -scenario outage -sink-batch -changes "$outage" \
			-concurrency 32 -json >"$out/outage.$side.json"
	done
fi

# The dedup index against its size: this tree, and the before tree when BEFORE_SRC is a
# checkout of it holding the benchmark (copy relay/spool/dedupscale_test.go there).
dedup() { # dir output
	(cd "$1" && HUBRELAY_DEDUP_SCALE="$dedupkeys" nice -n 5 go test -run '^$' -bench '^BenchmarkDedupScale$' -benchtime 1x \
		-timeout 90m ./relay/spool/...) | tee "$2"
}
if [ -n "$dedupkeys" ]; then
	chart="after=$out/dedup.after.txt"
	if [ -n "${BEFORE_SRC:-}" ] && ls "$BEFORE_SRC"/relay/spool/*/dedupscale_test.go "$BEFORE_SRC"/relay/spool/dedupscale_test.go >/dev/null 2>&1; then
		stamp "dedup scale before"
		dedup "$BEFORE_SRC" "$out/dedup.before.txt"
		chart="before=$out/dedup.before.txt,$chart"
	fi
	stamp "dedup scale after"
	dedup "$root" "$out/dedup.after.txt"
	"$after" bench -dedup-chart "$chart" -svg "$out/dedup-scale.svg"
fi
stamp end

# The summary: every check of every run, before and after side by side.
{
	echo "issue 19 figures, $(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - start)) s; $(cat "$out/builds.txt")"
	echo "load averages (1, 5, 15 min) when each run started:"
	sed 's/^/  /' "$out/load.txt"
	echo
	checks='.checks[] | select(.target != "-" or (.name | test("duplicate"))) |
		"  \(if .build == "compare" then "before" else "after " end) \(.name): \(if .reference then "\(.value * 100 | round / 100)x (\(.hubrelay * 10 | round / 10) vs \(.reference * 10 | round / 10) \(.unit))" else "\(.value * 10 | round / 10) \(.unit)" end)\(if .rounds then " rounds \(.rounds | map(. * 100 | round / 100))" else "" end) target \(.target) \(if .met then "met" else "MISSED" end)"'
	for f in "$out"/throughput.json "$out"/outage.before.json "$out"/outage.after.json; do
		[ -f "$f" ] || continue
		echo "$(basename "$f") (load $(jq -r '.loadavg_before' "$f") -> $(jq -r '.loadavg_after' "$f"), $(jq -r '.seconds | round' "$f") s):"
		case $f in *before*) jq -r "$checks" "$f" | sed 's/^  after /  before/' ;; *) jq -r "$checks" "$f" ;; esac
	done
	for f in "$out"/dedup.*.txt; do
		[ -f "$f" ] && { echo; echo "$(basename "$f"):"; grep -E '^(Benchmark|dedup-scale)' "$f" || true; }
	done
} | tee "$out/summary.txt"
echo "reports in $out"
