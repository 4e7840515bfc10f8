#!/usr/bin/env bash
# Where a user's wall time goes, in a fresh clone (no DVC cache, no run cache):
#   1. `dvc repro` from scratch (wall and peak RSS), then a no-op `dvc repro`;
#   2. each stage's command run by hand (wall, peak RSS, and the train stage's own phase line),
#      so that dvc repro minus their sum is DVC's overhead;
#   3. `dvc exp run -S train.seed=N` for seeds not run before in that clone (median of 3).
# Run from the repo root:   bash benchmarks/stage_costs.sh [git-ref, default HEAD] [seeds, default "101 102 103"]
# The clone is made from the committed ref (uncommitted edits are not measured) and removed afterwards.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:-HEAD}
seeds=${2:-101 102 103}
work=$(mktemp -d /tmp/stage-costs-XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
git checkout -q "$(git -C "$repo" rev-parse "$ref")"
echo "ref $(git rev-parse --short HEAD) ($ref), load before: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"

measure() {  # name, command... : one table row
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    read -r seconds kb <"$work/time"
    printf "| %-36s | %7.1f s | %6.0f MiB |\n" "$name" "$seconds" "$((kb / 1024))"  # /usr/bin/time: KiB
}
echo "| what | wall | peak RSS (MiB) |"
echo "|---|---|---|"
measure "dvc repro (fresh clone)" dvc repro
measure "dvc repro (no-op, second run)" dvc repro
grep -q "up to date" "$work/log" || { echo "second dvc repro was not a no-op" >&2; exit 1; }
total=0
for stage in prepare train evaluate export; do
    cmd=$(python -c "import sys, yaml; print(' '.join(yaml.safe_load(open('dvc.yaml'))['stages'][sys.argv[1]]['cmd'].split()))" "$stage")
    # shellcheck disable=SC2086
    row=$(measure "$stage (its command, by hand)" $cmd)
    echo "$row"
    [ "$stage" = train ] && train_log=$(grep -E "^train: (phases|best)" "$work/log" || true)
    total=$(python -c "print($total + float('$(echo "$row" | awk -F'|' '{print $3}' | tr -d ' s')'))")
done
printf "| %-36s | %7.1f s | |\n" "sum of the four commands" "$total"
echo
echo "train stage log: $train_log"
echo
for seed in $seeds; do
    measure "dvc exp run -S train.seed=$seed" dvc exp run -S "train.seed=$seed"
    grep -h '"accuracy"' reports/metrics.json >/dev/null && python -c "import json; m = json.load(open('reports/metrics.json')); print(f'   seed $seed: test {m[\"test\"][\"accuracy\"]}')"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
