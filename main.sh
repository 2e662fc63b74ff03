#!/usr/bin/env bash
# The main job, end to end, on a CPU with no downloads (the README's first command):
#   set up -> collect scripted demos (sim.py) -> train an RS-CL policy and a baseline on the pretrained,
#   frozen DINOv2-S (cached features) -> closed-loop evaluation of both, on seen and unseen looks
#   (evaluate.py) -> alignment to the robot state (cknna.py) -> one comparison table.
# Re-running it continues where it stopped (demos are topped up, finished runs and evaluations are kept).
# Sizes can be changed from the environment, e.g. ITERS=500 EVAL_EPISODES=10 bash main.sh for a quick look.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1
BACKBONE="${BACKBONE:-dinov2-s}"
CAMERAS="${CAMERAS:-agentview,robot0_eye_in_hand}"
LIFT_DEMOS="${LIFT_DEMOS:-40}"        # scripted demos of Lift, the task evaluated at length
OTHER_DEMOS="${OTHER_DEMOS:-10}"      # demos of PickPlaceCan and Stack each (multi-task training)
ITERS="${ITERS:-2000}"                # training steps per run
NOISE="${NOISE:-0.3}"                 # DART: noise on the expert's executed xyz actions while collecting
EVAL_EPISODES="${EVAL_EPISODES:-50}"  # Lift episodes per policy on seen looks
UNSEEN_EPISODES="${UNSEEN_EPISODES:-20}"  # ... and on unseen looks
OTHER_EVAL="${OTHER_EVAL:-0}"         # Can and Stack episodes (RS-CL policy, seen looks); 0 = skip
SEED="${SEED:-0}"
DATA=data/main-demos.hdf5
start=$(date +%s)

echo "== 1/4 collecting scripted demos ($LIFT_DEMOS lift, $OTHER_DEMOS can and stack) -> $DATA"
extend=; [ -f "$DATA" ] && extend=--extend
python sim.py --tasks lift --episodes "$LIFT_DEMOS" --cameras "$CAMERAS" --noise "$NOISE" --out "$DATA" $extend
python sim.py --tasks can,stack --episodes "$OTHER_DEMOS" --cameras "$CAMERAS" --noise "$NOISE" --out "$DATA" --extend

for run in rscl baseline; do
  echo "== 2/4 training $run ($ITERS steps, $BACKBONE frozen, cached features)"
  flags=(--backbone "$BACKBONE" --data "$DATA" --cameras "$CAMERAS" --token-pool 2 --adapter-dropout 0.0 --lr 1e-3
         --out "runs/main-$run" --max-iters "$ITERS" --seed "$SEED" --cache-features --cknna-every 500)
  [ "$run" = rscl ] && flags+=(--rscl)
  if [ -f "runs/main-$run/ckpt.pt" ]; then flags+=(--resume); fi
  python train.py "${flags[@]}"
done

echo "== 3/4 closed-loop evaluation: both policies, Lift, $EVAL_EPISODES episodes on seen and $UNSEEN_EPISODES on unseen looks"
for run in rscl baseline; do
  for look in seen unseen; do
    dir="runs/main-$run/eval-lift-$look"
    [ -f "$dir/results.json" ] && { echo "   $dir: done"; continue; }
    n=$EVAL_EPISODES; [ "$look" = unseen ] && n=$UNSEEN_EPISODES
    python evaluate.py "runs/main-$run/ckpt.pt" --tasks lift --episodes "$n" --appearance "$look" --out "$dir" --overwrite
  done
done
if [ "$OTHER_EVAL" -gt 0 ] && [ ! -f runs/main-rscl/eval-other-seen/results.json ]; then
  python evaluate.py runs/main-rscl/ckpt.pt --tasks can,stack --episodes "$OTHER_EVAL" --out runs/main-rscl/eval-other-seen --overwrite
fi

echo "== 4/4 alignment to the robot state (CKNNA) on the held-out demos of every task"
python cknna.py runs/main-baseline/ckpt.pt runs/main-rscl/ckpt.pt --data "$DATA" --out runs/main-cknna --overwrite

echo
echo "== summary ($(( ($(date +%s) - start) / 60 )) min)"
python - <<'PY'
import json, os

def last(run, key):
    rows = [json.loads(l) for l in open(f"runs/main-{run}/log.jsonl")]
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else float("nan")

def success(run, look):
    path = f"runs/main-{run}/eval-lift-{look}/results.json"
    if not os.path.exists(path):
        return "-"
    s = json.load(open(path))["summary"]["lift"]
    lo, hi = s["wilson95"]
    return f"{s['successes']}/{s['episodes']} = {s['success']:.2f} ({lo:.2f}-{hi:.2f})"

scores = {(r["run"], r["representation"]): r["cknna"] for r in json.load(open("runs/main-cknna/scores.json"))["rows"]}
rows = [("Lift success, seen looks (95% Wilson)", lambda r: success(r, "seen")),
        ("Lift success, unseen looks (95% Wilson)", lambda r: success(r, "unseen")),
        ("validation flow-matching loss", lambda r: f"{last(r, 'val_loss_fm'):.4f}"),
        ("CKNNA(h, q), held-out demos", lambda r: f"{scores.get((f'main-{r}', 'h'), float('nan')):.3f}"),
        ("CKNNA(z, q), held-out demos", lambda r: f"{scores.get((f'main-{r}', 'z'), float('nan')):.3f}")]
print(f"  {'':42s} {'RS-CL':28s} {'baseline':28s}")
for name, f in rows:
    print(f"  {name:42s} {f('rscl'):28s} {f('baseline'):28s}")
other = "runs/main-rscl/eval-other-seen/results.json"
if os.path.exists(other):
    for t, s in json.load(open(other))["summary"].items():
        print(f"  RS-CL {t}: {s['successes']}/{s['episodes']} ({s['wilson95'][0]:.2f}-{s['wilson95'][1]:.2f})")
PY
echo "  checkpoints: runs/main-rscl/ckpt.pt, runs/main-baseline/ckpt.pt (logs: log.jsonl beside them)"
echo "  videos:      runs/main-*/eval-lift-*/*.gif (every camera side by side)"
echo "  plots:       runs/main-cknna/alignment.png, runs/main-cknna/projection_*.png"
