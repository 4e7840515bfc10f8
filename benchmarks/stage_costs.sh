#!/usr/bin/env bash
# Wall time and peak memory of each stage and of a fresh `dvc repro`, on the full data.
# Run by hand from the repo root:  bash benchmarks/stage_costs.sh
# (it forces a rerun of every stage; outputs end up as `dvc repro` would leave them)
set -euo pipefail
cd "$(dirname "$0")/.."
measure() {  # name, command...
    local name=$1; shift
    /usr/bin/time -f "%e %M" -o /tmp/stage_cost.$$ "$@" >/dev/null 2>&1
    read -r seconds kb < /tmp/stage_cost.$$
    printf "| %-28s | %7.1f s | %7.0f MB |\n" "$name" "$seconds" "$((kb / 1024))"
}
echo "| what | wall | peak RSS |"
echo "|---|---|---|"
for stage in prepare train evaluate export; do
    measure "dvc repro --force $stage" dvc repro --force --single-item "$stage"
done
measure "dvc repro --force (all four)" dvc repro --force
rm -f /tmp/stage_cost.$$
