#!/bin/bash
# A/B of CPU kernel versions on a noisy machine: alternates the given builds of
# benches/cpu_step.rs (copies of target/release/deps/cpu_step-*), one thread, thread CPU time,
# and prints per build the minimum, median and mean over rounds of each run's median step time.
# usage: [REPS=5] [MLORC_BENCH_GRAD=gaussian] scripts/bench-ab.sh dense|q0|q1 ROWSxCOLS ROUNDS BINARY...
case=$1; shape=$2; rounds=$3; shift 3
declare -A all
for rep in $(seq $rounds); do
  for b in "$@"; do
    t=$(MLORC_BENCH_CLOCK=thread MLORC_BENCH_ONLY=$case MLORC_NUM_THREADS=1 MLORC_BENCH_SHAPES=$shape MLORC_BENCH_REPS=${REPS:-5} $b | tail -1 | awk -F'|' -v c=$case '{ if (c=="dense") print $3; else if (c=="q0") print $4; else print $6 }')
    all[$b]="${all[$b]} $t"
  done
done
for b in "$@"; do python3 -c "
import statistics,sys; v=[float(x) for x in sys.argv[2:]]; print(sys.argv[1], 'min %.3f median %.3f mean %.3f' % (min(v), statistics.median(v), statistics.mean(v)))" $b ${all[$b]}; done
