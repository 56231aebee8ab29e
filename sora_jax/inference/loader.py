"""Loading a model for inference: EMA params only, from a training workdir or an export.

One loader for both kinds of folder (`load`). From a workdir it reads only the EMA params
(and the DiT's latent statistics) out of the latest VAE and DiT training checkpoints:
no optimizer, no discriminator is built and their saved state is never read. From an
exported checkpoint (`export_format`) it reads the stored params tree.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sora_jax import config as config_lib
from sora_jax.common import checkpoint, finite, trees
from sora_jax.inference import adapter_format, export_format
from sora_jax.models import builders, lora, wan_folder
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.parallel import partitioning


@dataclasses.dataclass(frozen=True, eq=False)
class InferenceModel:
    """Everything sampling needs, by name."""

    config: ml_collections.ConfigDict
    vae: object  # models.vae.CausalVAE
    vae_params: dict  # EMA
    dit: object  # models.dit.DiT
    text_encoder: object  # text.encoders.TextEncoder (frozen ones carry their own params)
    params: dict  # {'dit': ..., 'text': ... for a trained encoder} (EMA)
    latent_mean: np.ndarray  # f32[c]: latents are normalised as (z - mean) / std
    latent_std: np.ndarray  # f32[c]
    name: str  # written into every video's provenance metadata
    steps: dict | None = None  # a workdir's: the checkpoint steps loaded ({'vae_step': ...})


def _checkpointer(config, workdir: str, stage: str) -> checkpoint.Checkpointer:
    ckpt = checkpoint.for_stage(config, workdir, stage)
    if ckpt.latest_step() is None:
        ckpt.close()
        raise FileNotFoundError(
            f"no {stage.upper() if stage == 'vae' else 'DiT'} checkpoint under "
            f"{ckpt.directory}: train the '{stage}' stage first "
            f"(python -m sora_jax.train --config=... --workdir={workdir})"
        )
    return ckpt


def _restore_fields(config, workdir: str, stage: str, fields: dict) -> tuple[int, dict]:
    """(step, fields) of the newest checkpoint of `stage` that restores (damaged ones are
    passed over with a warning); non-finite EMA weights raise `NonFiniteWeights`."""
    ckpt = _checkpointer(config, workdir, stage)
    name = "VAE" if stage == "vae" else "DiT"
    try:
        step, out = ckpt.restore_newest(
            lambda s: ckpt.restore_fields(fields, s), f"{name} checkpoint"
        )
    finally:
        ckpt.close()
    check_finite(out["ema_params"], f"the {name} checkpoint {step} in {ckpt.directory}")
    return step, out


class NonFiniteWeights(ValueError):
    """The weights hold NaN or inf (a diverged run): sampling them gives blank videos."""


def check_finite(params, where: str) -> None:
    """Raises `NonFiniteWeights` naming `where` unless every weight is finite."""
    if not finite.tree_is_finite(params):
        raise NonFiniteWeights(
            f"{where} holds non-finite weights (NaN/inf): the run diverged; re-run training "
            f"(it resumes from the last finite checkpoint, README 'When things go wrong')"
        )


def load_vae(config, workdir: str, mesh: Mesh | None = None):
    """(VAE module, EMA params replicated over `mesh`) from a workdir's newest VAE checkpoint
    that restores."""
    return load_vae_with_step(config, workdir, mesh)[:2]


def load_vae_with_step(config, workdir: str, mesh: Mesh | None = None):
    """`load_vae`'s (module, params) and the step of the checkpoint they come from (0 for a
    Wan VAE, read from its folder)."""
    mesh = mesh or mesh_lib.create_mesh(1)
    vae = builders.build_vae(config)
    replicated = mesh_lib.replicated(mesh)
    if config.vae.kind == "wan":
        params = wan_folder.load_vae_params(vae, config.vae.path)
        return vae, jax.device_put(params, replicated), 0
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        builders.abstract_vae_params(config, vae),
    )
    step, out = _restore_fields(config, workdir, "vae", {"ema_params": target})
    return vae, out["ema_params"], step


def dit_shardings(config, dit, text_encoder, mesh: Mesh) -> dict:
    """NamedShardings of the DiT (and trained text encoder) params ({'dit': ..., 'text': ...})
    on `mesh`, as config.mesh.rules say."""
    rules = partitioning.rules_from_config(config.mesh.rules)
    boxed = builders.abstract_dit_params(config, dit, text_encoder)
    return partitioning.shardings(boxed, mesh, rules)


def place(model: InferenceModel, mesh: Mesh) -> InferenceModel:
    """`model` with its DiT params sharded over `mesh` by config.mesh.rules and the VAE
    params replicated (no copy for arrays already placed so)."""
    shardings = dit_shardings(model.config, model.dit, model.text_encoder, mesh)
    return dataclasses.replace(
        model,
        params=jax.device_put(model.params, shardings),
        vae_params=jax.device_put(model.vae_params, mesh_lib.replicated(mesh)),
    )


def load_dit(config, workdir: str, mesh: Mesh):
    """(DiT, text encoder, EMA params sharded as config.mesh.rules say, extras)."""
    return _load_dit(config, workdir, mesh)[:4]


def _load_dit(config, workdir: str, mesh: Mesh):
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    boxed = builders.abstract_dit_params(config, dit, text_encoder)
    shardings = dit_shardings(config, dit, text_encoder, mesh)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.unbox(boxed),
        shardings,
    )
    c = config.vae.model.latent_channels
    stat = jax.ShapeDtypeStruct((c,), jnp.float32, sharding=mesh_lib.replicated(mesh))
    fields = {"extras": {"latent_mean": stat, "latent_std": stat}}
    # The EMA holds only the trained leaves (a LoRA run's adapters); the frozen ones are read
    # from the params, which they are.
    trained = builders.trainable_mask(config, params)
    fields["ema_params"] = trees.subset(params, trained)
    if trained is not None:
        frozen = jax.tree.map(lambda m: not m, trained)
        fields["params"] = trees.subset(params, frozen)
    step, out = _restore_fields(config, workdir, "dit", fields)
    ema = out["ema_params"] if trained is None else trees.overlay(out["params"], out["ema_params"])
    return dit, text_encoder, ema, out["extras"], step


def load_workdir(workdir: str, mesh: Mesh | None = None) -> InferenceModel:
    """The latest VAE and DiT checkpoints' EMA params of a training workdir."""
    config = config_lib.load_saved(workdir)
    mesh = mesh or mesh_lib.local_mesh()
    vae, vae_params, vae_step = load_vae_with_step(config, workdir, mesh)
    dit, text_encoder, params, extras, dit_step = _load_dit(config, workdir, mesh)
    return InferenceModel(
        config=config,
        vae=vae,
        vae_params=vae_params,
        dit=dit,
        text_encoder=text_encoder,
        params=params,
        latent_mean=np.asarray(extras["latent_mean"]),
        latent_std=np.asarray(extras["latent_std"]),
        name=os.path.basename(os.path.abspath(workdir)),
        steps={"vae_step": vae_step, "dit_step": dit_step},
    )


def load_export(path: str, mesh: Mesh | None = None) -> InferenceModel:
    """An exported checkpoint's params (float32; default one device): on a `mesh` the DiT's
    sharded as config.mesh.rules say, the VAE's replicated. A checkpoint whose tree does not
    fit its config's models raises ValueError."""
    meta = export_format.read_meta(path)
    config = config_lib.load_saved(path)
    vae = builders.build_vae(config)
    text_encoder = builders.build_text_encoder(config)
    dit = builders.build_dit(config, text_encoder.dim)
    expected = {
        "vae": builders.abstract_vae_params(config, vae),
        **nn.unbox(builders.abstract_dit_params(config, dit, text_encoder)),
    }
    mesh = mesh or mesh_lib.create_mesh(1)
    shardings = {
        "vae": jax.tree.map(lambda _: mesh_lib.replicated(mesh), expected["vae"]),
        **dit_shardings(config, dit, text_encoder, mesh),
    }
    params = export_format.read_params(path, meta, expected, mesh, shardings)
    check_finite(params, f"the exported checkpoint {path}")
    vae_params = params.pop("vae")
    return InferenceModel(
        config=config,
        vae=vae,
        vae_params=vae_params,
        dit=dit,
        text_encoder=text_encoder,
        params=params,
        latent_mean=np.asarray(meta["latent_mean"], np.float32),
        latent_std=np.asarray(meta["latent_std"], np.float32),
        name=meta["name"],
    )


def with_adapters(model: InferenceModel, path: str) -> InferenceModel:
    """`model` with the LoRA adapters of the folder `path` (`adapter_format`) merged into its
    DiT's kernels, each placed as the kernel was: a plain DiT that samples as the LoRA
    fine-tune did. An adapter missing, unexpected or of another shape is a ValueError naming it."""
    meta = adapter_format.read_meta(path)
    if builders.lora_spec(model.config) is not None:
        raise ValueError(
            f"{model.name} is a LoRA run with adapters of its own: export it (merged) first and "
            f"load the adapters {path} onto that export"
        )
    spec = adapter_format.spec(meta)
    want = adapter_format.expected(model.config, model.text_encoder, spec)
    adapters = adapter_format.read(path, meta, want, scanned=model.config.dit.model.scan_blocks)
    base = model.params["dit"]
    dit = lora.merge(lora.combine(base, adapters), spec)
    dit = jax.tree.map(lambda x, b: jax.device_put(x, b.sharding), dit, base)
    check_finite(dit, f"the base {model.name} with the adapters {path}")
    return dataclasses.replace(
        model, params={**model.params, "dit": dit}, name=f"{model.name}+{meta['name']}"
    )


def load(path: str, mesh: Mesh | None = None, adapters: str | None = None) -> InferenceModel:
    """The model of an exported checkpoint (`python -m sora_jax.export`) or of a training
    workdir (its latest checkpoints); with `adapters` (a folder written by `python -m
    sora_jax.export --adapters_only`) merged into its DiT (`with_adapters`)."""
    if adapters:
        adapter_format.read_meta(adapters)  # a wrong folder fails before the slow loading
    model = load_export(path, mesh) if export_format.is_export(path) else load_workdir(path, mesh)
    return with_adapters(model, adapters) if adapters else model
