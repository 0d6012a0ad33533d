#!/bin/bash
R=/work/exp/s1/run_final
run() { bash /work/exp/s38/ev.sh $R /work/exp/s1/sw_$1 "${@:2}"; }
run lmw0.8 align.lm_weight=0.8 &
run lmw0.6b2.5 align.lm_weight=0.6 align.lm_bonus=2.5 &
wait
run lmw0.7 align.lm_weight=0.7 &
run lmw0.6ww0.3 align.lm_weight=0.6 align.word_weight=0.3 &
wait
echo done2 >> /work/exp/s38/results.txt
