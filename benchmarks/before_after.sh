#!/usr/bin/env bash
# Runs the benchmark set against two checkouts, alternating base and head for each benchmark,
# so a restructuring can show that its figures did not move (issue 9: "every benchmark gives
# the same results before and after"). Each checkout needs its own .venv (`make setup` there).
#
#   benchmarks/before_after.sh BASE_DIR HEAD_DIR OUT_DIR [benchmark ...]
#
# Writes OUT_DIR/<benchmark>.<base|head>.<round>.txt (stdout+stderr of each run) and prints
# where they are. The machine must be quiet: on the shared 2-core VM, compare medians and read
# the load average printed before each run.
set -euo pipefail
base=$(cd "$1" && pwd); head=$(cd "$2" && pwd); out=$3; shift 3
mkdir -p "$out"; out=$(cd "$out" && pwd)
declare -A CMD=(
  [pipeline_e2e]="benchmarks/pipeline_e2e.py --runs 3"
  [ingest]="benchmarks/ingest.py --runs 3"
  [broker_hop]="benchmarks/broker_hop.py --events 300 --burst 1000"
  [s3_put]="benchmarks/s3_put.py --puts 100 --rounds 3"
  [volume_load]="benchmarks/volume_load.py --repeat 5"
  [stage_overhead]="benchmarks/stage_overhead.py --jobs 30"
  [seg_write]="benchmarks/seg_write.py --repeat 3"
  [export]="benchmarks/export.py --repeat 5 --sizes-mb 1.3,10,50"
  [inference]="benchmarks/inference.py --repeat 20"
  [cold_start]="benchmarks/cold_start.py --runs 3 --warm 100"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(broker_hop s3_put volume_load seg_write export inference stage_overhead cold_start ingest pipeline_e2e)
rounds=${ROUNDS:-1}
export TCP_NODELAY=1
for name in "${names[@]}"; do
  for r in $(seq 1 "$rounds"); do
    for side in base head; do
      dir=${!side}
      echo "== $name $side round $r (load $(cut -d' ' -f1-3 /proc/loadavg))"
      (cd "$dir" && timeout 900 .venv/bin/python ${CMD[$name]}) > "$out/$name.$side.$r.txt" 2>&1 \
        || echo "   exit $? (see $out/$name.$side.$r.txt)"
    done
  done
done
echo "results in $out"
