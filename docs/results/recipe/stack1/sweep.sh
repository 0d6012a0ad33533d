#!/bin/bash
# decoding sweep on dev for the stack-1 seed-1 head (final step), two at a time
R=/work/exp/s1/run_final
run() { bash /work/exp/s38/ev.sh $R /work/exp/s1/sw_$1 "${@:2}"; }
bash /work/exp/s38/ev.sh /work/exp/s1/run0_final /work/exp/s1/dev0_final &
run lmw0.6 align.lm_weight=0.6 &
wait
run ww0.8 align.word_weight=0.8 &
run bonus3 align.lm_bonus=3.0 &
wait
echo done >> /work/exp/s38/results.txt
