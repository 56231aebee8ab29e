#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (e.g. v5p-64: 8 hosts x 4 chips): the same command on every
# worker; jax.distributed finds the coordinator from the TPU environment itself.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/x.py gs://bucket/runs/x [--config.x=y ...]
# Needs: the repository at ~/sora_jax on every worker (the first command puts it there) and a
# workdir every host can reach (a GCS bucket or a shared filesystem: orbax writes each host's
# shards into one checkpoint). Set e.g. --config.mesh.fsdp=-1 --config.mesh.data=1.
# Several slices (multislice): add --config.mesh.dcn.data=<slices>.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file}; workdir=${4:?workdir}
shift 4
repo=${REPO:-$(git rev-parse --show-toplevel)}
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/ >/dev/null
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/$(basename "$repo") && pip install -q -e . 'jax[tpu]' &&
  python -m sora_jax.train --config=$config --workdir=$workdir $*"
