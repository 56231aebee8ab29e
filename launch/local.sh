#!/usr/bin/env bash
# Train locally on N simulated CPU devices, in one process or in P local processes (a
# multi-host run in miniature: jax.distributed over 127.0.0.1, gloo CPU collectives).
#   launch/local.sh configs/tiny.py runs/tiny [NUM_DEVICES] [--config.x=y ...]
#   PROCESSES=2 launch/local.sh configs/tiny.py runs/tiny 8 --config.mesh.fsdp=2
# With PROCESSES=P each process gets NUM_DEVICES/P devices; process 0 logs, the others'
# output goes to WORKDIR/process_<i>.log.
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}; devices=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
processes=${PROCESSES:-1}
if (( devices % processes )); then
  echo "NUM_DEVICES=$devices is not divisible by PROCESSES=$processes" >&2; exit 2
fi
per_process=$(( devices / processes ))
if [[ "$per_process" -gt 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${per_process}"
fi
if [[ "$processes" -eq 1 ]]; then
  exec python -m sora_jax.train --config="$config" --workdir="$workdir" "$@"
fi
export JAX_PLATFORMS=cpu
port=${PORT:-$(( 20000 + RANDOM % 20000 ))}
mkdir -p "$workdir"
pids=()
for (( i = 1; i < processes; i++ )); do
  python -m sora_jax.train --config="$config" --workdir="$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$processes" --process_id="$i" \
    "$@" >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
python -m sora_jax.train --config="$config" --workdir="$workdir" \
  --coordinator_address="127.0.0.1:$port" --num_processes="$processes" --process_id=0 \
  "$@" || status=$?
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
