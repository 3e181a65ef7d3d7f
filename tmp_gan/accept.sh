#!/bin/bash
# usage: accept.sh tag shape maxsteps extra...
tag=$1; shape=$2; steps=$3; shift 3
for seed in 0 1 2; do
  start=$(date +%s.%N)
  OMP_NUM_THREADS=1 dgmrun experiment=gan_toy2d data.shape=$shape trainer.max_steps=$steps seed=$seed trainer.enable_progress_bar=false "$@" hydra.run.dir=/work/main/tmp_gan/runs/$tag-s$seed > /work/main/tmp_gan/runs/$tag-s$seed.log 2>&1
  end=$(date +%s.%N)
  echo "$tag seed=$seed wall=$(echo "$end - $start" | bc)s $(grep '^metrics' /work/main/tmp_gan/runs/$tag-s$seed.log)"
done
