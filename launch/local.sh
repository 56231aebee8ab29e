#!/usr/bin/env bash
# Train locally, optionally on N simulated CPU devices (data parallel over them).
#   launch/local.sh configs/tiny.py runs/tiny [NUM_DEVICES] [--config.x=y ...]
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}; devices=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
if [[ "$devices" -gt 1 ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
fi
exec python -m sora_jax.train --config="$config" --workdir="$workdir" "$@"
