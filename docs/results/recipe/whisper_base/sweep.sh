#!/bin/bash
# decoding sweep on dev for the shipped Whisper base checkpoint, two at a time
A=/work/main/src/speechwire/assets/demo_asr
run() { /work/exp/s38/ev.sh $A /work/exp/s38/sw_$1 "${@:2}"; }
run base &
run lmw0.3 align.lm_weight=0.3 &
wait
run lmw0.5 align.lm_weight=0.5 &
run ww0.3 align.word_weight=0.3 &
wait
run bonus2.5 align.lm_bonus=2.5 &
run rs1.0 align.rescore=1.0 &
wait
run rs0.5 align.rescore=0.5 &
run bonus1.5 align.lm_bonus=1.5 &
wait
echo done >> /work/exp/s38/results.txt
