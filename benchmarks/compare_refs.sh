#!/usr/bin/env bash
# Two commits side by side, as a user meets them: for each round and each ref (alternated, so both see
# the same machine), a fresh clone's `dvc repro` (no DVC cache, no run cache), then in that clone one
# `dvc exp run -S train.seed=N` with a seed not run before there. Prints one row per run (wall, and the
# peak resident memory of the largest stage process, from /usr/bin/time) and the median ratio new/old. Run from the repo root:
#   bash benchmarks/compare_refs.sh OLD_REF NEW_REF [rounds, default 2]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
old=$(git -C "$repo" rev-parse --short "$1")
new=$(git -C "$repo" rev-parse --short "$2")
rounds=${3:-2}
work=$(mktemp -d /tmp/compare-refs-XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "old $old, new $new, $rounds rounds, load before: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "| round | ref | fresh-clone dvc repro | dvc exp run -S train.seed=N | test accuracy (repro, exp) | peak RSS (repro, exp) |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
    for ref in "$old" "$new"; do
        clone="$work/$ref-$round"
        git clone -q "$repo" "$clone"
        git -C "$clone" checkout -q "$ref"
        cd "$clone"
        /usr/bin/time -f "%e %M" -o "$work/repro" dvc repro >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
        first=$(python -c "import json; print(json.load(open('reports/metrics.json'))['test']['accuracy'])")
        seed=$((200 + round))
        /usr/bin/time -f "%e %M" -o "$work/exp" dvc exp run -S "train.seed=$seed" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
        second=$(python -c "import json; print(json.load(open('reports/metrics.json'))['test']['accuracy'])")
        read -r repro_s repro_kb <"$work/repro"
        read -r exp_s exp_kb <"$work/exp"
        echo "| $round | $ref | $repro_s s | $exp_s s (seed $seed) | $first, $second | $((repro_kb / 1024)), $((exp_kb / 1024)) MiB |" | tee -a "$work/rows"
        cd "$repo"
        rm -rf "$clone"
    done
done
python - "$work/rows" "$old" "$new" <<'EOF'
import statistics, sys
rows = [line.split("|")[1:-1] for line in open(sys.argv[1])]
for column, name in ((2, "dvc repro"), (3, "dvc exp run")):
    median = {ref: statistics.median(float(r[column].split()[0]) for r in rows if r[1].strip() == ref) for ref in sys.argv[2:]}
    old, new = (median[ref] for ref in sys.argv[2:])
    print(f"{name}: median {old:.1f} s -> {new:.1f} s, {old / new:.2f}x as fast")
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
