#!/usr/bin/env bash
# The standard benchmark cases of bench/README.md -> results/bench/jax_<case>.json, plus the
# memory/compile sweep over K -> results/bench/jax_memory_<case>.json. Each case runs in a
# fresh process (peak RSS is per process). Timings on a shared machine are noisy: every
# record keeps the load average and every block's median; rerun when the machine is quiet.
#
#   bench/run_all.sh                          # float32, backprop=autodiff (fastest training)
#   BACKPROP=invertible bench/run_all.sh      # training memory flat in K
#   COMPUTE_DTYPE=bfloat16 REMAT=1 bench/run_all.sh   # mixed precision in the coupling
#                                             # networks, hidden activations recomputed
#   PAIRED=1 bench/run_all.sh                 # also the paired runs against the PyTorch peer
#                                             # (float32 and bfloat16+remat, PAIRED_VARIANTS=)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/bench}
BACKPROP=${BACKPROP:-autodiff}
COMPUTE_DTYPE=${COMPUTE_DTYPE:-float32}
REMAT=${REMAT:-0}
TIMING=${TIMING:---warmup=3 --iters=10 --repeats=3}
suffix=""
[ "$COMPUTE_DTYPE" != float32 ] && suffix="_$COMPUTE_DTYPE"
remat_flag=""
if [ "$REMAT" = 1 ]; then remat_flag="--remat_nets"; suffix="${suffix}_remat"; fi

run() {  # image_shape batch K
  local h w c
  IFS=, read -r h w c <<<"$1"
  local case="${h}x${w}x${c}_L3_K$3_h128_b$2"
  [ "$BACKPROP" != autodiff ] && case="${case}_$BACKPROP"
  $PY -m bench.throughput --image_shape="$1" --num_levels=3 --num_steps="$3" \
    --hidden_channels=128 --batch_size="$2" --backprop="$BACKPROP" \
    --compute_dtype="$COMPUTE_DTYPE" $remat_flag --case="$case$suffix" --out="$OUT" $TIMING \
    | tail -1
}

for K in 8 32; do
  run 32,32,1 64 "$K"   # (a) MNIST 28x28 padded to 32x32
  run 32,32,3 32 "$K"   # (b) CIFAR-10
done
if [ "${MEMORY:-1}" = 1 ] && [ "$COMPUTE_DTYPE" = float32 ]; then
  $PY -m bench.memory --image_shape=32,32,1 --batch_size=64 --out="$OUT" | tail -1
  $PY -m bench.memory --image_shape=32,32,3 --batch_size=32 --out="$OUT" | tail -1
fi
if [ "${PAIRED:-0}" = 1 ]; then
  for shape_batch in "32,32,1 64" "32,32,3 32"; do
    set -- $shape_batch
    $PY -m bench.paired --peer=normflows --image_shape="$1" --batch_size="$2" --backprop="$BACKPROP" \
      --compute_dtype="${PAIRED_VARIANTS:-float32,bfloat16+remat}" --out="$OUT" | tail -1
  done
fi
$PY -m bench.table --results="$OUT"
