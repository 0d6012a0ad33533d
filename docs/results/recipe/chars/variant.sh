#!/bin/sh
# variant.sh NAME overrides...  : align stage (1500 steps, chars recipe) + CTC-level per-subset dev eval
name=$1; shift
cd /work/main
.venv/bin/speechwire train configs/demo_asr.yaml train.stage=align align.steps=1500 train.max_steps=1500 \
  adapter.stack=2 align.vocab=chars align.beam_size=16 align.lm_order=0 train.eval_every=500 \
  train.output_dir=/work/exp/chars/var/$name "$@" > /work/exp/chars/var/$name.log 2>&1
cd /work/exp/chars && THREADS=2 /work/main/.venv/bin/python char_eval2.py var/$name 7 '0.4:1.0,0.5:1.0' 16 2>&1 | grep -v Loading | tail -2 > var/$name.eval
