#!/usr/bin/env bash
# The main job, end to end, on a CPU with no downloads (the README's first command):
#   set up -> collect scripted demos (sim.py) -> train RS-CL and a baseline (tiny backbone, cached
#   features) -> closed-loop evaluation (evaluate.py) -> alignment plots (cknna.py) -> summary.
# Re-running it continues where it stopped (demos are extended, finished runs are resumed).
# Sizes can be changed from the environment: EPISODES, ITERS, EVAL_EPISODES, TASKS, EVAL_TASKS.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1
TASKS="${TASKS:-lift,can,stack}"
EVAL_TASKS="${EVAL_TASKS:-lift}"
EPISODES="${EPISODES:-20}"          # demos per task
ITERS="${ITERS:-1500}"             # training steps per run
EVAL_EPISODES="${EVAL_EPISODES:-20}"
DATA=data/demos.hdf5
start=$(date +%s)

echo "== 1/4 collecting $EPISODES scripted demos per task ($TASKS) -> $DATA"
if [ -f "$DATA" ]; then extend=--extend; else extend=; fi
python sim.py --tasks "$TASKS" --episodes "$EPISODES" --out "$DATA" $extend

for run in rscl baseline; do
  echo "== 2/4 training $run ($ITERS steps, tiny backbone, cached features)"
  flags=(--data "$DATA" --out "runs/main-$run" --max-iters "$ITERS" --cache-features --cknna-every 500)
  [ "$run" = rscl ] && flags+=(--rscl)
  [ -f "runs/main-$run/ckpt.pt" ] && flags+=(--resume)
  python train.py "${flags[@]}"
done

echo "== 3/4 closed-loop evaluation of the RS-CL policy on $EVAL_TASKS ($EVAL_EPISODES episodes each)"
python evaluate.py runs/main-rscl/ckpt.pt --tasks "$EVAL_TASKS" --episodes "$EVAL_EPISODES" --out runs/main-rscl/eval

echo "== 4/4 alignment to proprioceptive state (CKNNA) and the representation pictures"
python cknna.py runs/main-baseline/ckpt.pt runs/main-rscl/ckpt.pt --data "$DATA" --out runs/main-cknna --n 2000

echo
echo "== summary ($(( ($(date +%s) - start) / 60 )) min)"
python - <<'PY'
import json
r = json.load(open("runs/main-rscl/eval/results.json"))
for task, s in r["summary"].items():
    lo, hi = s["wilson95"]
    print(f"  {task}: success {s['successes']}/{s['episodes']} (95% CI {lo:.2f}-{hi:.2f})")
PY
echo "  checkpoints: runs/main-rscl/ckpt.pt, runs/main-baseline/ckpt.pt (logs: log.jsonl beside them)"
echo "  videos:      runs/main-rscl/eval/*.gif"
echo "  plots:       runs/main-cknna/*.png"
