r"""Training entry point: every stage of a config, then samples and an evaluation.

  python -m sora_jax.train --config=configs/tiny.py --workdir=runs/tiny \
      [--config.dit.train.steps=100 ...]
  python -m sora_jax.train --config=configs/dit.py:XL --dry_run   # size and FLOPs only

Re-running the same command resumes from the latest checkpoints (finished
stages are skipped), so a killed run loses at most `checkpoint_every` steps.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from sora_jax import config as config_lib
from sora_jax.common import cli, workdir_lock
from sora_jax.evaluation import prompt_eval
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.inference import samples
from sora_jax.logging import writers
from sora_jax.models import attention as attention_lib
from sora_jax.models import wan_folder
from sora_jax.parallel import distributed
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.text import encoders
from sora_jax.training import dit_trainer, planning, vae_trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the DiT's parameter count and FLOPs per token, then exit."
)


def dry_run(config: ml_collections.ConfigDict) -> dict:
    """Validates the config and prints the DiT's size and cost (nothing is allocated)."""
    summary = planning.model_summary(config_lib.validate(config))
    m = config.dit.model
    print(
        f"DiT hidden={m.hidden} depth={m.depth} heads={m.num_heads} mlp={m.mlp} "
        f"text={m.text_attention} attention={m.attention_layout} dtype={m.dtype} "
        f"remat={m.remat_policy} kernel={attention_lib.resolve(m.attention_impl)}\n"
        f"  parameters: DiT {summary['dit_params']:,}, text encoder (trained) "
        f"{summary['text_params']:,}\n"
        f"  FLOPs per token (matmuls, seq_len={config.dit.seq_len}, attention as the kernel "
        f"executes it on one video per row): forward "
        f"{summary['forward_flops_per_token'] / 1e9:.3f} GFLOP, train step "
        f"{summary['train_flops_per_token'] / 1e9:.3f} GFLOP\n"
        f"  tokens per step {summary['tokens_per_step']:,}: train step "
        f"{summary['train_flops_per_token'] * summary['tokens_per_step'] / 1e12:.3f} TFLOP"
    )
    return summary


# Multi-process runs (README "Scaling out"): found by themselves on TPU pods and under SLURM.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the run.")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str):
    """A resumed run must use the config it started with (else checkpoints mismatch)."""
    path = os.path.join(workdir, config_lib.CONFIG_FILE)
    if not os.path.exists(path):
        return
    old = config_lib.load_saved(workdir)
    for stage in ("vae", "dit"):
        # Compare through JSON, where tuples and lists are the same thing.
        was, now = (json.loads(c[stage].model.to_json()) for c in (old, config))
        if was != now:
            raise ValueError(
                f"{workdir} holds a run whose config.{stage}.model differs from this one "
                f"({was} vs {now}); use a new --workdir or the same config"
            )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the configured stages; returns {'vae': history, 'dit': history, 'eval': ...}."""
    config = config_lib.validate(config)
    # What a run needs beyond a plannable config: the model folders it loads.
    encoders.check_folder(config)
    wan_folder.check_trainable(config)
    with workdir_lock.hold(workdir):
        check_workdir_config(config, workdir)
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if jax.process_index() == 0:
        config_lib.save(config, workdir)
    mesh = mesh_lib.from_config(config.mesh)
    writer = writers.MetricWriter(os.path.join(workdir, "tensorboard"))
    logging.info(
        "process %d/%d, devices: %s; mesh %s",
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
        dict(mesh.shape),
    )
    results = {}
    try:
        if "vae" in config.stages:
            _, _, results["vae"] = vae_trainer.train(config, workdir, mesh, writer)
        if "dit" in config.stages:
            _, results["dit"] = dit_trainer.train(config, workdir, mesh, writer)
            pipe = pipeline_lib.load_pipeline(workdir)
            if jax.process_index() == 0:
                s = config.sample
                samples.write_samples(
                    pipe,
                    list(s.prompts),
                    os.path.join(workdir, "samples"),
                    num_frames=s.num_frames,
                    height=s.height,
                    width=s.width,
                    seed=s.seed,
                )
            # The prompt-following judge reads moving shapes: own data has no such truth.
            if config.eval.at_end and config.data.source == "moving_shapes":
                results["eval"] = prompt_eval.evaluate_pipeline(
                    pipe, config.eval.num_prompts, config.eval.seed
                )
                writer.write_scalars(
                    config.dit.train.steps, {f"eval/{k}": v for k, v in results["eval"].items()}
                )
                if jax.process_index() == 0:
                    with open(os.path.join(workdir, "eval.json"), "w") as f:
                        json.dump(results["eval"], f, indent=2)
    finally:
        writer.close()
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = cli.config_value(_CONFIG)
    if _DRY_RUN.value:
        dry_run(config)
        return
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required (checkpoints, logs and samples go there)")
    # Values first: a bad key fails in a second, before devices and processes start.
    config_lib.validate(config)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # process 0 logs for the run
    results = train_and_evaluate(config, _WORKDIR.value)
    if "eval" in results:
        print("prompt following:", json.dumps(results["eval"]))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
