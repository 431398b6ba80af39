#!/bin/bash
# Issue 40's studies on the protocol fixed in benchmarks/results/issue40/*protocol.json, resumable on a fresh machine:
# the demonstration files are re-collected (seeded) where missing and each training study resumes from its committed JSON.
#   bash benchmarks/issue40.sh data                     # the four files of training_protocol.json, one after another (stop 53: 44 min as two parallel chains)
#   bash benchmarks/issue40.sh dtp                      # every DTP cell not yet in benchmarks/results/issue40/dtp_*/dtp.json
#   bash benchmarks/issue40.sh train <study> <arm>...   # those arms of focusvla / vat / deepvision, seeds 0-2
# One process per study out dir; two side by side (one thread each) fill a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=.venv/bin/python
DATA=(runs/data/{lift200_dart04,pick_color300_dart04,pick_color_clutter200_dart04,stack200_dart04_base}.hdf5)
TASKS=(embedded/lift:200 embedded/pick_color:300 embedded/pick_color_clutter:200 embedded/stack:200)
case "${1:-}" in
  data)
    mkdir -p runs/data
    for i in "${!DATA[@]}"; do
      out=${DATA[$i]}
      [ -f "$out" ] || .venv/bin/vla-agents collect "${TASKS[$i]%:*}" --episodes "${TASKS[$i]#*:}" --seed 100000 --noise 0.4 --out "$out"
    done ;;
  dtp)
    # VAT is left out: it has no prompt tokens for DTP's important region
    agents=(policies/checkpoints/{oft,focusvla,deepvision,vla_adapter}-tiny-embedded)
    for task in pick_color_clutter lift_lookalikes; do
      $PY demos/ablations.py dtp --agents "${agents[@]}" --env "embedded/$task" --seeds 0 1 2 \
        --episodes 50 --out "benchmarks/results/issue40/dtp_$task"
    done ;;
  train)
    [ $# -ge 3 ] || { echo "train needs a study (focusvla, vat, deepvision) and its arms, e.g. train deepvision deepvision-base" >&2; exit 2; }
    study=$2; out=runs/issue40/$study
    mkdir -p "$out"
    [ -f "$out/$study.json" ] || cp "benchmarks/results/issue40/$study/$study.json" "$out/"
    $PY demos/ablations.py "$study" --data "${DATA[@]}" --steps 8000 --eval-every 2000 --eval-episodes 10 \
      --episodes 50 --seeds 0 1 2 --variants "${@:3}" --out "$out" ;;
  *) echo "usage: $0 data | dtp | train <study> <arm>..." >&2; exit 2 ;;
esac
