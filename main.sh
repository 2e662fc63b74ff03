#!/usr/bin/env bash
# The main job, end to end, on a CPU with no downloads (the README's first command):
#   set up -> collect scripted demos (sim.py) -> train an RS-CL policy and a baseline on the pretrained,
#   frozen DINOv2-S (cached features) -> closed-loop evaluation of both on the same episodes, seen and
#   unseen looks (evaluate.py) -> alignment to the robot state (cknna.py) -> one comparison table.
# Steps 2-4 are `python study.py --preset main`: one seed of the study's two main variants.
# Re-running it continues where it stopped (demos are topped up, finished runs and evaluations are kept).
# Sizes can be changed from the environment, e.g. ITERS=500 EVAL_EPISODES=10 bash main.sh for a quick look.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYTHONUNBUFFERED=1
CAMERAS="${CAMERAS:-agentview,robot0_eye_in_hand}"
LIFT_DEMOS="${LIFT_DEMOS:-40}"        # scripted demos of Lift, the task evaluated at length
OTHER_DEMOS="${OTHER_DEMOS:-0}"       # demos of PickPlaceCan and Stack each (multi-task; Lift fell from 22/50 to 13/50 with 10 each)
NOISE="${NOISE:-0.3}"                 # DART: noise on the expert's executed xyz actions while collecting
ITERS="${ITERS:-1000}"                # training steps per run (Lift 20/50 after 1000, 22/50 after 2000: README)
EVAL_EPISODES="${EVAL_EPISODES:-50}"  # Lift episodes per policy on seen looks
UNSEEN_EPISODES="${UNSEEN_EPISODES:-20}"  # ... and on unseen looks
DATA=data/main-demos.hdf5
start=$(date +%s)

echo "== 1/2 collecting scripted demos ($LIFT_DEMOS lift, $OTHER_DEMOS can and stack) -> $DATA"
extend=; [ -f "$DATA" ] && extend=--extend
python sim.py --tasks lift --episodes "$LIFT_DEMOS" --cameras "$CAMERAS" --noise "$NOISE" --out "$DATA" $extend
if [ "$OTHER_DEMOS" -gt 0 ]; then
  python sim.py --tasks can,stack --episodes "$OTHER_DEMOS" --cameras "$CAMERAS" --noise "$NOISE" --out "$DATA" --extend
fi

echo "== 2/2 RS-CL and baseline: train ($ITERS steps each), evaluate (Lift, $EVAL_EPISODES seen + $UNSEEN_EPISODES unseen looks), CKNNA"
python study.py --preset main --seeds 1 --data "$DATA" --iters "$ITERS" --episodes "$EVAL_EPISODES" \
  --unseen "$UNSEEN_EPISODES" --out runs/main --train-args "--cameras $CAMERAS"

echo "== done in $(( ($(date +%s) - start) / 60 )) min"
echo "  checkpoints: runs/main/rscl-s0/ckpt.pt, runs/main/baseline-s0/ckpt.pt (training logs: log.jsonl beside them)"
echo "  videos:      runs/main/*-s0/eval-lift-*/*.gif (every camera side by side)"
echo "  plots:       runs/main/success.png, runs/main/cknna.png, runs/main/rscl_floor.png,"
echo "               runs/main/*-s0/cknna/alignment.png and projection_*.png (PCA of h by appearance and state)"
