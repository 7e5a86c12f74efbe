#!/usr/bin/env bash
# Wall time of the README's main job from an empty results/ and variant cache, server
# start-ups included (the bf16 baseline runs first, then fp8). Target: under 5 minutes.
#   bash bench/main_job_time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s.%N)
.venv/bin/python -m harness +variant=fp8 results_dir="$tmp/results" cache_dir="$tmp/cache" > "$tmp/log" 2>&1
end=$(date +%s.%N)
grep -E "── |Gate:|energy ratio|Fallback:" "$tmp/log" || true
printf 'main job wall time: %.1f s (runs: %s)\n' "$(echo "$end - $start" | bc)" "$(wc -l < "$tmp/results/runs.jsonl")"
