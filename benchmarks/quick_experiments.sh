#!/usr/bin/env bash
# What an experiment costs, four ways, in one fresh clone after its `dvc repro` (alternated within each
# round, each with a seed not run before there, so no run-cache hit):
#   full        dvc exp run -S train.seed=N                       train, evaluate, export
#   no export   dvc exp run evaluate -S train.seed=N              train, evaluate (export left stale)
#   speed       dvc exp run -S train.seed=N <speed preset>        the preset of benchmarks/time_to_accuracy.py
#   speed, no export
# Prints wall and test accuracy per run, then the medians. Run from the repo root:
#   bash benchmarks/quick_experiments.sh [git-ref, default HEAD] [rounds, default 3]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:-HEAD}
rounds=${2:-3}
work=$(mktemp -d /tmp/quick-exps-XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
git checkout -q "$(git -C "$repo" rev-parse "$ref")"
read -ra speed < <(python -c "from benchmarks.time_to_accuracy import PRESETS; print(*(f'-S{o}' for o in PRESETS['speed preset']))")
echo "ref $(git rev-parse --short HEAD) ($ref), speed preset: ${speed[*]}, load before: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
/usr/bin/time -f "%e" -o "$work/time" dvc repro >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
echo "dvc repro (fresh clone): $(cat "$work/time") s"
echo "| round | variant | command | wall | test accuracy |"
echo "|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
    for variant in full "no export" speed "speed, no export"; do
        seed=$((300 + 10 * round + ${#variant}))  # distinct per round and variant
        args=(-S "train.seed=$seed")
        case $variant in speed*) args+=("${speed[@]}") ;; esac
        case $variant in *"no export") args=(evaluate "${args[@]}") ;; esac
        /usr/bin/time -f "%e" -o "$work/time" dvc exp run "${args[@]}" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
        accuracy=$(python -c "import json; print(json.load(open('reports/metrics.json'))['test']['accuracy'])")
        echo "| $round | $variant | dvc exp run ${args[*]} | $(cat "$work/time") s | $accuracy |" | tee -a "$work/rows"
    done
done
python - "$work/rows" <<'EOF'
import statistics, sys
rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in open(sys.argv[1])]
for variant in dict.fromkeys(r[1] for r in rows):
    mine = [r for r in rows if r[1] == variant]
    wall = statistics.median(float(r[3].split()[0]) for r in mine)
    accuracy = statistics.median(float(r[4]) for r in mine)
    print(f"{variant}: median {wall:.1f} s, test accuracy median {accuracy:.2%} ({len(mine)} runs)")
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
