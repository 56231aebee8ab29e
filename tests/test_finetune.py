"""Fine-tuning the DiT from another run (config.dit.finetune): LoRA trains only adapters and
keeps optimizer state for them alone, its export merges them, its adapters exported alone apply
to the base (or start another run) as they were; a full fine-tune leaves frozen params alone; a
base or adapters that do not fit are named."""

import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_cli import _one_line
from test_train import micro_config, run_cli

from sora_jax import config as config_lib
from sora_jax import train
from sora_jax.inference import adapter_format, exporter, loader
from sora_jax.logging import writers
from sora_jax.models import builders, lora
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import dit_trainer
from sora_jax.training import finetune as finetune_lib


def _flat(tree):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("base"))
    config = micro_config(vae_steps=1, dit_steps=1)
    config.eval.at_end = False
    train.train_and_evaluate(config, workdir)
    return workdir


def _finetune(base, workdir, steps=3, learning_rate=None, overrides=None, **finetune):
    """(config, state, history) of a DiT fine-tune of `base` in `workdir`: micro with `steps`
    steps, config.dit.finetune fields `finetune` and dotted-key `overrides`."""
    config = micro_config(dit_steps=steps)
    if learning_rate is not None:
        config.dit.train.learning_rate = learning_rate
    if overrides:
        config = config_lib.override(config, overrides)
    config.stages = ("dit",)
    config.dit.finetune.init_from = base
    for k, v in finetune.items():
        config.dit.finetune[k] = v
    config = config_lib.validate(config)
    config_lib.save(config, workdir)
    writer = writers.MetricWriter(os.path.join(workdir, "tensorboard"), console=False)
    state, history = dit_trainer.train(config, workdir, mesh_lib.create_mesh(1), writer)
    return config, state, history


def _dit_args(model):
    """Fixed DiT inputs (x, t, seg, pos, text, tmask) for `model`'s config: one video in the first
    half of the row, padding after it."""
    rng = np.random.default_rng(0)
    c, lt = model.config.dit, model.config.text.max_length
    x = jnp.asarray(rng.normal(size=(1, c.seq_len, model.dit.patch_dim)), jnp.float32)
    seg = jnp.asarray(
        np.r_[np.ones(c.seq_len // 2), np.zeros(c.seq_len - c.seq_len // 2)][None], jnp.int32
    )
    pos = jnp.zeros((1, c.seq_len, 3), jnp.int32).at[0, :, 0].set(jnp.arange(c.seq_len) % 4)
    t = jnp.full((1, c.max_segments), 0.7)
    text = jnp.asarray(rng.normal(size=(1, c.max_segments, lt, model.dit.text_dim)), jnp.float32)
    tmask = jnp.ones((1, c.max_segments, lt), bool)
    return x, t, seg, pos, text, tmask


def test_lora_trains_adapters_only_and_exports_merged(base, tmp_path):
    workdir = str(tmp_path / "lora")
    config, state, history = _finetune(base, workdir, mode="lora", lora_rank=2, lora_alpha=4.0)
    assert [s for s, _ in history] == [1, 2, 3]
    # The VAE came from the base (step 0 of this workdir), the DiT's base weights are the base
    # run's EMA, untouched; only adapters moved, and only they have Adam moments.
    source = loader.load(base)
    ours = _flat(state.params["dit"])
    for k, v in _flat(source.params["dit"]).items():
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(v), err_msg="/".join(k))
    adapters = {k: v for k, v in ours.items() if k[-1] in lora.ADAPTER_NAMES}
    assert adapters and any(
        np.any(np.asarray(v) != 0) for k, v in adapters.items() if k[-1] == "lora_b"
    )
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) >= 1]
    assert len(moments) == 2 * len(adapters)
    # The EMA averages the adapters alone: no second copy of the frozen base.
    assert set(state.ema_params) == {"dit"} and set(_flat(state.ema_params["dit"])) == set(adapters)
    assert sorted(os.listdir(os.path.join(workdir, "vae", "checkpoints"))) == ["0"]

    # The workdir samples with the adapters; the export is a plain DiT with them merged.
    model = loader.load(workdir)
    loaded = _flat(model.params["dit"])
    assert set(loaded) == set(ours)
    for k, v in loaded.items():  # the base from the params, the adapters from their EMA
        want = state.ema_params["dit"] if k in adapters else state.params["dit"]
        np.testing.assert_array_equal(np.asarray(v), np.asarray(_flat(want)[k]), err_msg=str(k))
    assert model.dit.lora == lora.LoraSpec(2, 4.0, 0.0, config.dit.finetune.lora_targets)
    out = exporter.save_model(model, str(tmp_path / "export"))
    exported = loader.load(out)
    assert exported.dit.lora is None and exported.config.dit.finetune.mode == "full"
    assert not any(k[-1] in lora.ADAPTER_NAMES for k in _flat(exported.params["dit"]))
    np.testing.assert_array_equal(
        exported.vae_params["encoder"]["conv_in"]["kernel"],
        source.vae_params["encoder"]["conv_in"]["kernel"],
    )
    args = _dit_args(model)
    want = model.dit.apply({"params": model.params["dit"]}, *args)
    got = exported.dit.apply({"params": exported.params["dit"]}, *args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    plain = source.dit.apply({"params": source.params["dit"]}, *args)
    assert np.abs(np.asarray(want) - np.asarray(plain)).max() > 0  # the adapters act


def test_full_finetune_leaves_frozen_params(base, tmp_path):
    _, state, _ = _finetune(base, str(tmp_path / "full"), freeze="text_proj|time_mlp")
    source = _flat(loader.load(base).params["dit"])
    ours = _flat(state.params["dit"])
    frozen = [k for k in ours if k[0] in ("text_proj", "time_mlp_in", "time_mlp_out")]
    assert frozen
    assert set(_flat(state.ema_params["dit"])) == set(ours) - set(frozen)  # no EMA of frozen
    for k in frozen:
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(source[k]))
    assert np.any(
        np.asarray(ours["block_0", "qkv", "kernel"])
        != np.asarray(source["block_0", "qkv", "kernel"])
    )


def test_base_that_does_not_fit_is_named(base, tmp_path):
    config = micro_config()
    config.stages = ("dit",)
    config.dit.finetune.init_from = base
    config.dit.model.mlp_ratio = 2.0
    with pytest.raises(ValueError, match=r"init_from=.*: block_0/mlp_in/(bias|kernel) has shape"):
        config = config_lib.validate(config)
        config_lib.save(config, str(tmp_path))
        dit_trainer.train(
            config,
            str(tmp_path),
            mesh_lib.create_mesh(1),
            writers.MetricWriter(str(tmp_path / "tb"), console=False),
        )


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("mode", "qlora", "dit.finetune.mode='qlora'"),
        ("lora_rank", 0, "dit.finetune.lora_rank=0: must be >= 1"),
        ("freeze", "(", "dit.finetune.freeze='\\(': is not a regular expression"),
        ("adapters_from", "exports/a", "dit.finetune.adapters_from='exports/a': needs mode='lora'"),
    ],
)
def test_finetune_config_is_checked(key, value, match):
    config = micro_config()
    config.dit.finetune.mode = "lora" if key == "lora_rank" else config.dit.finetune.mode
    config.dit.finetune[key] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate(config)


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    """(LoRA fine-tune workdir of `base`, its adapters exported alone by the CLI)."""
    root = tmp_path_factory.mktemp("lora_run")
    workdir, out = str(root / "lora"), str(root / "adapters")
    _finetune(base, workdir, mode="lora", lora_rank=2, lora_alpha=4.0, lora_targets="cross_.*")
    r = run_cli("sora_jax.export", f"--workdir={workdir}", f"--out={out}", "--adapters_only")
    assert r.returncode == 0 and r.stdout.strip() == out, r.stderr[-2000:]
    return workdir, out


def _bytes(folder):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def test_adapters_export_holds_only_the_adapters(base, lora_run, tmp_path):
    workdir, out = lora_run
    full = exporter.export_workdir(workdir, str(tmp_path / "full"))
    assert _bytes(out) < 0.1 * _bytes(full)
    meta = adapter_format.read_meta(out)
    config = config_lib.load_saved(workdir)
    assert meta["lora"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": "cross_.*"}
    assert meta["init_from"] == base
    assert meta["dit_model"] == json.loads(config.dit.model.to_json())
    ckptr = ocp.StandardCheckpointer()
    stored = _flat(ckptr.restore(os.path.join(out, adapter_format.PARAMS_DIR)))
    ckptr.close()
    ours = {k: v for k, v in _flat(loader.load(workdir).params["dit"]).items()}
    adapters = {k: v for k, v in ours.items() if k[-1] in lora.ADAPTER_NAMES}
    assert set(stored) == set(adapters) and {k[-2] for k in stored} == {
        "cross_q",
        "cross_kv",
        "cross_out",
    }
    for k, v in adapters.items():
        np.testing.assert_array_equal(np.asarray(stored[k]), np.asarray(v), err_msg="/".join(k))


@pytest.mark.parametrize("scan", [False, True])
def test_base_with_adapters_samples_as_the_merged_export(base, lora_run, tmp_path, scan):
    workdir, out = lora_run
    merged = loader.load(exporter.export_workdir(workdir, str(tmp_path / "merged")))
    # The base as an export whose blocks are scanned, sharded over fsdp x tensor, or the
    # workdir itself (unrolled, one device): the adapters follow the run's unrolled blocks.
    if scan:
        path = exporter.export_workdir(base, str(tmp_path / "base"), scan_blocks=True)
        mesh = mesh_lib.create_mesh(4, ici={"fsdp": 2, "tensor": 2})
    else:
        path, mesh = base, None
    model = loader.load(path, mesh, adapters=out)
    assert model.dit.lora is None and model.name.endswith("+adapters")
    assert model.config.dit.model.scan_blocks == scan
    if scan:  # each merged kernel stays where the base's was
        kernel = model.params["dit"]["blocks"]["block"]["cross_q"]["kernel"]
        assert not kernel.sharding.is_fully_replicated, kernel.sharding
    args = _dit_args(model)
    got = model.dit.apply({"params": model.params["dit"]}, *args)
    want = merged.dit.apply({"params": merged.params["dit"]}, *args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    plain = loader.load(base)
    unchanged = plain.dit.apply({"params": plain.params["dit"]}, *args)
    assert np.abs(np.asarray(got) - np.asarray(unchanged)).max() > 1e-6  # the adapters act


def _edited(out, tmp_path, **lora_fields):
    """A copy of the adapters folder `out` whose adapters.json says other LoRA fields."""
    copy = str(tmp_path / "edited")
    shutil.copytree(out, copy)
    file = os.path.join(copy, adapter_format.META_FILE)
    with open(file) as f:
        meta = json.load(f)
    meta["lora"].update(lora_fields)
    with open(file, "w") as f:
        json.dump(meta, f)
    return copy


def _other_model(tmp_path, **model):
    """An adapters folder (zeros) of a rank-2 LoRA on a DiT with other `model` fields."""
    config = micro_config()
    config.dit.finetune.update(mode="lora", lora_rank=2, lora_alpha=4.0)
    config.dit.model.update(model)
    text_encoder = builders.build_text_encoder(config)
    want = adapter_format.expected(config, text_encoder, builders.lora_spec(config))
    adapters = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), want)
    return adapter_format.save(str(tmp_path / "other"), config, adapters, name="other")


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda out, tmp: _edited(out, tmp, rank=3),
            r"block_0/cross_kv/lora_a has shape \(\d+, 2\), this DiT's is \(\d+, 3\)",
        ),
        (
            lambda out, tmp: _edited(out, tmp, targets="cross_q|cross_kv"),
            "adapter block_0/cross_out/lora_a has no place",
        ),
        (
            lambda out, tmp: _edited(out, tmp, targets="cross_.*|qkv"),
            "no adapter block_0/qkv/lora_a",
        ),
        (lambda out, tmp: _other_model(tmp, mlp_ratio=2.0), r"block_0/mlp_in/lora_b has shape"),
        (lambda out, tmp: _other_model(tmp, depth=2), "adapter block_1/.* has no place"),
    ],
    ids=["rank", "fewer_targets", "more_targets", "mlp_ratio", "depth"],
)
def test_adapters_that_do_not_fit_are_named(base, lora_run, tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        loader.load(base, adapters=make(lora_run[1], tmp_path))


def test_adapters_only_needs_a_lora_run(base, tmp_path):
    with pytest.raises(ValueError, match=r"is not a LoRA run \(config.dit.finetune.mode='full'\)"):
        exporter.export_adapters(base, str(tmp_path / "a"))
    r = run_cli("sora_jax.export", f"--workdir={base}", f"--out={tmp_path}/b", "--adapters_only")
    _one_line(r, "is not a LoRA run", "export the whole model without --adapters_only")
    assert not os.path.exists(tmp_path / "b")


def test_lora_run_starts_from_saved_adapters(base, lora_run, tmp_path):
    _, out = lora_run
    lora_fields = dict(mode="lora", lora_rank=2, lora_alpha=4.0, lora_targets="cross_.*")
    # A learning rate of 1e-9 (it must be > 0): one Adam step moves each weight by about that, so
    # the run still holds the adapters it started from (fresh ones differ by O(1): A is random).
    _, state, _ = _finetune(
        base, str(tmp_path / "a"), steps=1, learning_rate=1e-9, adapters_from=out, **lora_fields
    )
    ckptr = ocp.StandardCheckpointer()
    stored = _flat(ckptr.restore(os.path.join(out, adapter_format.PARAMS_DIR)))
    ckptr.close()
    ours = _flat(state.params["dit"])
    assert any(np.any(v != 0) for k, v in stored.items() if k[-1] == "lora_b")
    for k, v in stored.items():
        np.testing.assert_allclose(np.asarray(ours[k]), v, rtol=0, atol=1e-7, err_msg="/".join(k))
    config = micro_config()
    config.dit.finetune.update(init_from=base, adapters_from=out, **{**lora_fields, "lora_rank": 3})
    want = adapter_format.expected(
        config, builders.build_text_encoder(config), builders.lora_spec(config)
    )
    with pytest.raises(
        ValueError, match=r"adapters_from=.*: trained with lora_rank=2, this run has 3"
    ):
        finetune_lib.load_adapters(config, want)
