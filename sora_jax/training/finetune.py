"""Fine-tuning part of a model (config.dit.finetune): the DiT (and a trained text encoder)
initialised from another run's weights (a LoRA run's adapters fresh, or from an adapters
folder: adapters_from) or from a public Wan transformer (config.init.from_pretrained), and an
optimizer that updates, and keeps state for, only the trainable leaves (LoRA adapters, or
everything but a frozen pattern)."""

from __future__ import annotations

import os

import flax
import jax
import optax

from sora_jax.common import checkpoint, trees
from sora_jax.inference import adapter_format, loader
from sora_jax.models import block_stack, builders, lora, wan_transformer_weights
from sora_jax.training import train_state as ts
from sora_jax.training import vae_trainer


def only_trainable(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """``tx`` on the leaves where ``trainable`` (a bool pytree of the params' structure) is
    True; the others get zero updates and no optimizer state (Adam's moments exist only for
    the trained leaves)."""
    labels = jax.tree.map(lambda m: "train" if m else "frozen", trainable)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def optimizer(config, tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
    """``tx`` restricted to the trainable params (see ``builders.trainable_mask``)."""
    mask = builders.trainable_mask(config, params)
    return tx if mask is None else only_trainable(tx, mask)


def _flat(tree) -> dict:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def load_base(config, path: str) -> dict:
    """The params (EMA) of an export or a training workdir at `path`: 'dit' in the block form
    (scanned or not) config.dit.model asks for, and 'text' when its text encoder was trained
    (the built-in one: its DiT was trained on that encoder's embeddings)."""
    source = loader.load(path)
    params = source.params["dit"]
    spec = builders.lora_spec(source.config)
    if spec is not None:  # a LoRA run's own adapters become part of the base
        params = lora.merge(params, spec)
    scanned = config.dit.model.scan_blocks
    if source.config.dit.model.scan_blocks != scanned:
        params = block_stack.convert(params, config.dit.model.attention_layout, scanned=scanned)
    return {**source.params, "dit": params}


def load_adapters(config, dit_params) -> dict:
    """The adapters of config.dit.finetune.adapters_from, nested as in `dit_params` (this
    run's LoRA DiT); a LoRA field other than this run's, or an adapter missing, unexpected or
    of another shape, is a ValueError naming it."""
    path = config.dit.finetune.adapters_from
    meta = adapter_format.read_meta(path)
    ours, theirs = builders.lora_spec(config), adapter_format.spec(meta)
    for field in ("rank", "alpha", "targets"):
        if getattr(ours, field) != getattr(theirs, field):
            raise ValueError(
                f"config.dit.finetune.adapters_from={path}: trained with lora_{field}="
                f"{getattr(theirs, field)!r}, this run has {getattr(ours, field)!r}"
            )
    want = lora.split(dit_params)[1]
    return adapter_format.read(path, meta, want, scanned=config.dit.model.scan_blocks)


def _matched(where: str, part: str, base: dict, ours: dict) -> None:
    """Raises naming the first leaf of `part` missing from the base, extra in it, or of
    another shape (flat dicts; this run's LoRA adapters are not the base's to have)."""
    wanted = {k for k in ours if k[-1] not in lora.ADAPTER_NAMES}
    name = "DiT" if part == "dit" else "text encoder"
    if wanted - set(base):
        raise ValueError(f"{where}: its {name} has no {'/'.join(min(wanted - set(base)))}")
    if set(base) - wanted:
        raise ValueError(f"{where}: {'/'.join(min(set(base) - wanted))} is not in this {name}")
    for k in sorted(wanted):
        if base[k].shape != ours[k].shape:
            raise ValueError(
                f"{where}: {'/'.join(k)} has shape {base[k].shape}, this {name} {ours[k].shape}"
            )


def initialize(config, state):
    """``state`` with its DiT params and EMA, and those of a trained text encoder, taken from
    config.dit.finetune.init_from (a LoRA model keeps its fresh adapters, or takes those of
    adapters_from); each array placed where the state's is. A base leaf missing from the
    source, an extra one, or a shape mismatch is an error naming it."""
    path = config.dit.finetune.init_from
    where = f"config.dit.finetune.init_from={path}"
    source = load_base(config, path)
    params = dict(state.params)
    for part, tree in state.params.items():
        if part not in source:
            raise ValueError(f"{where}: it has no trained {part} params for this run to start from")
        base, ours = _flat(source[part]), _flat(tree)
        _matched(where, part, base, ours)
        if part == "dit" and config.dit.finetune.adapters_from:
            base.update(_flat(load_adapters(config, tree)))
        merged = {
            k: jax.device_put(base[k], v.sharding) if k in base else v for k, v in ours.items()
        }
        params[part] = flax.traverse_util.unflatten_dict(merged)
    return state.replace(params=params, ema_params=_fresh_ema(params, state.ema_params))


def _fresh_ema(params, ema_like):
    """The EMA of `params` at the start: copies of the leaves the EMA keeps (`ema_like`'s
    paths), in buffers of their own, since the train step donates both trees."""
    return jax.tree.map(jax.numpy.copy, trees.like(params, ema_like))


def from_pretrained(config, state: ts.TrainState) -> ts.TrainState:
    """``state`` with the Wan transformer's params (and their EMA) read from the
    ``transformer/`` folder of config.init.from_pretrained onto the state's shardings, each
    process reading only its devices' slices."""
    folder = os.path.join(config.init.from_pretrained, "transformer")
    dit = dict(state.params["dit"])
    # A LoRA run's adapters stay fresh (zero update): the folder fills the base.
    base, adapters = lora.split(dit["transformer"])
    dit["transformer"] = lora.combine(wan_transformer_weights.load_sharded(folder, base), adapters)
    params = {**state.params, "dit": dit}
    return state.replace(params=params, ema_params=_fresh_ema(params, state.ema_params))


def seed_vae(config, workdir: str, mesh) -> None:
    """A DiT fine-tune in a workdir without a VAE checkpoint (config.stages without 'vae')
    takes the VAE of config.dit.finetune.init_from: its EMA params and latent statistics become
    this workdir's VAE checkpoint at step 0, so the workdir samples and resumes on its own."""
    ckpt = checkpoint.for_stage(config, workdir, "vae")
    try:
        if ckpt.latest_step() is not None:
            return
        path = config.dit.finetune.init_from
        source = loader.load(path)
        model = builders.build_vae(config)
        disc = vae_trainer.build_discriminator(config)
        state = vae_trainer.init_state(
            config,
            model,
            ts.make_optimizer(config.vae.train),
            mesh,
            disc,
            vae_trainer.disc_optimizer(config) if disc is not None else None,
        )
        ours, theirs = _flat(state.params), _flat(source.vae_params)
        if set(ours) != set(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
            raise ValueError(
                f"config.dit.finetune.init_from={path}: its VAE does not match config.vae.model"
            )
        params = flax.traverse_util.unflatten_dict(
            {k: jax.device_put(theirs[k], v.sharding) for k, v in ours.items()}
        )
        stats = {
            "latent_mean": jax.numpy.asarray(source.latent_mean, jax.numpy.float32),
            "latent_std": jax.numpy.asarray(source.latent_std, jax.numpy.float32),
        }
        state = state.replace(params=params, ema_params=params, extras=stats)
        ckpt.save(0, state, force=True, data_state={} if ckpt.with_data else None)
        ckpt.wait()
    finally:
        ckpt.close()
