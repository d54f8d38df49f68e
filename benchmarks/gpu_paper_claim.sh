#!/usr/bin/env bash
# The paper's own claim on one GPU: SSM helps a wide pooled feature (resnet50, C = 2048) and not a narrow one
# (resnet18, C = 512). From scratch on all 60,000 Fashion-MNIST training images, 4 epochs (near a plateau), heads
# baseline (timm's Linear), ssm, 4fc and bn1fc, seeds 0-3: 32 runs, the two studies side by side, each 2 runs at a time
# with 3 data-loading workers per run (16 CPU cores); about 8 minutes on one H200. Each run's result is written when
# it finishes (OUT/MODEL/runs/NAME/run.json); a study cut off by LIMIT reports the runs that finished.
#
# Nothing is downloaded: Fashion-MNIST's four IDX .gz files come from FM_SOURCE (default .dev/fm, else the Debian
# package's /usr/share/datasets/fashion-mnist) and timm's train.py from TIMM_ROOT (default .dev/timm-scripts).
# Run from the repository root:  bash benchmarks/gpu_paper_claim.sh [OUT]   (docs/evidence.md: how it is sized)
set -euo pipefail
OUT=${1:-output/gpu_paper_claim}
LIMIT=${LIMIT:-480} DEVICE=${DEVICE:-cuda} EPOCHS=${EPOCHS:-4}  # seconds for the two studies; the reports follow
FM_SOURCE=${FM_SOURCE:-$([ -d .dev/fm ] && echo .dev/fm || echo /usr/share/datasets/fashion-mnist)}
export TIMM_ROOT=${TIMM_ROOT:-$PWD/.dev/timm-scripts} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ -f "$TIMM_ROOT/train.py" ] || { echo "No train.py in TIMM_ROOT=$TIMM_ROOT: copy timm's scripts there."; exit 2; }
AMP=(); [ "$DEVICE" != cuda ] || AMP=(--amp --channels-last)
ROOT=$(python3 -m timm_ssm.fashion_mnist "$OUT/data" --source "$FM_SOURCE" --no-download)
RECIPE=(--dataset torch/fashion_mnist --data-dir "$ROOT" --val-split test --variants baseline ssm 4fc bn1fc
        --seeds 0 1 2 3 --primary ssm-baseline ssm-4fc ssm-bn1fc --device $DEVICE --jobs 2 --num-classes 10
        --in-chans 1 --img-size 28 --mean 0.286 --std 0.353 --crop-pct 1.0 --scale 0.75 1 --color-jitter 0
        --opt momentum --momentum 0.9 --lr 0.1 --weight-decay 5e-4 --sched cosine --epochs $EPOCHS --warmup-epochs 1
        -b 256 --workers 3 --log-interval 50 "${AMP[@]}")
for model in resnet18 resnet50; do
    timeout "$LIMIT" python3 -m timm_ssm.study --model $model "${RECIPE[@]}" --out "$OUT/$model" \
        > "$OUT/$model.log" 2>&1 &
done
wait || true
for model in resnet18 resnet50; do
    python3 -m timm_ssm.study --out "$OUT/$model" --report > /dev/null 2>&1 || echo "$model: no finished run"
    [ -f "$OUT/$model/study.md" ] && cat "$OUT/$model/study.md"
done
