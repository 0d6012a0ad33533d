#!/bin/bash
R=/work/exp/s1/run_final
run() { bash /work/exp/s38/ev.sh $R /work/exp/s1/sw_$1 "${@:2}"; }
run lmw0.6oov6 align.lm_weight=0.6 align.word_oov=-6.0 &
run lmw0.6oov8 align.lm_weight=0.6 align.word_oov=-8.0 &
wait
echo done3 >> /work/exp/s38/results.txt
