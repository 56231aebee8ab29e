"""VAE training losses: patch GAN (hinge, adaptive weight, start step), LPIPS weights and loss,
joint image + video batches, latent statistics stored with the VAE checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import micro_config

from sora_jax import config as config_lib
from sora_jax.common import checkpoint
from sora_jax.models import discriminator as disc_lib
from sora_jax.models import lpips as lpips_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import train_state as ts
from sora_jax.training import vae_losses, vae_trainer
from sora_jax.models import builders

SMALL = dict(widths=(4, 8), depths=(1, 2))


def test_hinge_and_generator_losses():
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
    # real: relu(1 - r) = 0, 0.5, 2 -> mean 5/6; fake: relu(1 + f) = 0, 1, 2 -> mean 1
    np.testing.assert_allclose(vae_losses.hinge_discriminator_loss(real, fake), 0.5 * (5 / 6 + 1))
    np.testing.assert_allclose(vae_losses.hinge_discriminator_loss(real + 9, fake - 9), 0.0)
    np.testing.assert_allclose(vae_losses.generator_loss(fake), 1 / 3)


def test_adaptive_weight_and_start_factor():
    rec = {"a": jnp.array([3.0, 4.0])}  # norm 5
    gan = {"a": jnp.array([0.0, 0.5])}  # norm 0.5
    np.testing.assert_allclose(vae_losses.adaptive_weight(rec, gan), 5 / (0.5 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(vae_losses.adaptive_weight(rec, gan, max_weight=2.0), 2.0)
    assert float(vae_losses.gan_factor(jnp.int32(4), 5)) == 0.0
    assert float(vae_losses.gan_factor(jnp.int32(5), 5)) == 1.0


def test_discriminator_patch_logits_and_causality():
    disc = disc_lib.PatchDiscriminator3d(
        channels=(4, 8, 8), temporal_downsample=(True, False), norm_groups=2
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16, 24, 3))
    params = disc.init(jax.random.PRNGKey(1), x)["params"]
    logits = disc.apply({"params": params}, x)
    assert logits.shape == (2, 3, 4, 6)  # time 5 -> 3, space / 4
    # Causal: changing the last frame leaves the first logit frame unchanged.
    y = disc.apply({"params": params}, x.at[:, -1].add(1.0))
    np.testing.assert_allclose(y[:, 0], logits[:, 0], atol=1e-6)
    assert not np.allclose(y[:, -1], logits[:, -1])
    with pytest.raises(ValueError, match="temporal_downsample"):
        disc_lib.PatchDiscriminator3d(channels=(4, 8), temporal_downsample=()).init(
            jax.random.PRNGKey(0), x
        )


def _gan_config(start_step):
    c = micro_config()
    c.vae.latent_noise = 0.0
    c.vae.gan.weight = 0.5
    c.vae.gan.start_step = start_step
    c.vae.gan.channels = (4, 8)
    c.vae.gan.temporal_downsample = (True,)
    c.vae.gan.norm_groups = 2
    c.vae.train.batch_size = 2
    c.vae.train.image_batch_size = 2
    return config_lib.validate(c)


def test_gan_train_step_off_before_start_on_after():
    c = _gan_config(start_step=1)
    model, disc = builders.build_vae(c), vae_trainer.build_discriminator(c)
    tx, disc_tx = ts.make_optimizer(c.vae.train), vae_trainer.disc_optimizer(c)
    state = vae_trainer.init_state(c, model, tx, mesh_lib.create_mesh(1), disc, disc_tx)
    batch = vae_trainer.vae_batch(c, 0)
    assert batch["video"].shape == (2, 5, 16, 16, 3) and batch["image"].shape == (2, 1, 16, 16, 3)
    step = jax.jit(vae_trainer.make_train_step(model, tx, c.vae, disc, disc_tx))
    rng = jax.random.PRNGKey(0)

    def rec_only(m):
        return m["l1"] + c.vae.mse_weight * m["mse"] + c.vae.kl_weight * m["kl"]

    s1, m0 = step(state, batch, rng)  # step 0 < start_step: no GAN
    assert float(m0["gan_factor"]) == 0.0 and float(m0["gan_d_loss"]) == 0.0
    np.testing.assert_allclose(m0["loss"], rec_only(m0), rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, s1.disc_params, state.disc_params)
    # Nor is the discriminator run before the start step: with NaN discriminator weights the
    # step is finite and updates the VAE exactly as with the real ones.
    nan_disc = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), state.disc_params)
    s1_nan, m0_nan = step(state.replace(disc_params=nan_disc), batch, rng)
    assert bool(m0_nan["finite"]) and np.isfinite(float(m0_nan["loss"]))
    jax.tree.map(np.testing.assert_array_equal, s1_nan.params, s1.params)

    s2, m1 = step(s1, batch, rng)  # step 1: GAN on
    assert float(m1["gan_factor"]) == 1.0 and float(m1["gan_d_loss"]) > 0.0
    gan_term = c.vae.gan.weight * m1["gan_adaptive_weight"] * m1["gan_g_loss"]
    np.testing.assert_allclose(m1["loss"], rec_only(m1) + gan_term, rtol=1e-5)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), s2.disc_params, s1.disc_params)
    assert all(jax.tree.leaves(changed))
    assert int(s2.step) == 2

    # The adaptive weight is the ratio of the two losses' gradient norms at the decoder's
    # last layer, recomputed here by hand for the images and videos of step 1.
    params = s1.params

    def losses(kernel):
        p = vae_trainer._replace_at(params, vae_losses.last_layer_path, kernel)
        rec, fake, n = 0.0, 0.0, 0
        for x in (batch["video"], batch["image"]):
            mean, _ = model.apply({"params": p}, x, method=model.encode)
            z = jax.lax.stop_gradient(mean)
            r = model.apply({"params": p}, z, method=model.decode)
            err = r - x
            rec += jnp.sum(jnp.mean(jnp.abs(err), axis=(1, 2, 3, 4)))
            rec += c.vae.mse_weight * jnp.sum(jnp.mean(err**2, axis=(1, 2, 3, 4)))
            fake += jnp.sum(jnp.mean(disc.apply({"params": s1.disc_params}, r), axis=(1, 2, 3)))
            n += x.shape[0]
        return rec / n, -fake / n

    kernel = vae_trainer._get_at(params, vae_losses.last_layer_path)
    # One jitted program (op-by-op 3D convs and their gradients take a minute on CPU).
    grads = jax.jit(
        lambda k: (jax.grad(lambda u: losses(u)[0])(k), jax.grad(lambda u: losses(u)[1])(k))
    )
    g_rec, g_gan = grads(kernel)
    expect = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)
    np.testing.assert_allclose(m1["gan_adaptive_weight"], expect, rtol=1e-3)


def test_gan_config_errors():
    c = micro_config()
    c.vae.gan.temporal_downsample = (True,)
    with pytest.raises(ValueError, match="vae.gan.temporal_downsample"):
        config_lib.validate(c)
    c = micro_config()
    c.vae.perceptual.weight = 0.1
    with pytest.raises(ValueError, match="vae.perceptual.path"):
        config_lib.validate(c)


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_lpips_weights_round_trip_and_loss(tmp_path, ext):
    params = lpips_lib.random_weights(0, **SMALL)
    path = str(tmp_path / f"lpips.{ext}")
    lpips_lib.save(path, params, **SMALL)
    model, loaded = lpips_lib.load(path)
    assert (tuple(model.widths), tuple(model.depths)) == ((4, 8), (1, 2))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    dist = jax.jit(lpips_lib.distance_fn(model, loaded))
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 16, 16, 3), minval=-1, maxval=1)
    np.testing.assert_allclose(dist(x, x), 0.0, atol=1e-6)
    near = dist(x, x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape))
    far = dist(x, -x)
    assert near.shape == (2, 3) and np.all(near > 0) and np.all(far > near)


def test_lpips_layout_and_errors(tmp_path):
    names = lpips_lib.external_names()  # the full VGG16 layout
    convs = sorted(int(k.split(".")[1]) for k in names if k.endswith(".weight") and "features" in k)
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert names["features.28.weight"][1] == (512, 512, 3, 3)
    assert names["lin4.model.1.weight"][1] == (1, 512, 1, 1)

    with pytest.raises(FileNotFoundError, match="perceptual.path"):
        lpips_lib.load(str(tmp_path / "missing.safetensors"))
    params = lpips_lib.random_weights(0, **SMALL)
    path = str(tmp_path / "w.npz")
    lpips_lib.save(path, params, **SMALL)
    tensors = dict(np.load(path))
    tensors["lin1.model.1.weight"] = np.ones((1, 5, 1, 1), np.float32)
    np.savez(path, **tensors)
    with pytest.raises(ValueError, match=r"'lin1.model.1.weight' has shape \(1, 5, 1, 1\)"):
        lpips_lib.load(path)
    del tensors["lin1.model.1.weight"]
    np.savez(path, **tensors)
    with pytest.raises(ValueError, match="missing tensor 'lin1.model.1.weight'"):
        lpips_lib.load(path)


def test_perceptual_loss_in_the_train_step(tmp_path):
    path = str(tmp_path / "lpips.safetensors")
    lpips_lib.save(path, lpips_lib.random_weights(0, **SMALL), **SMALL)
    c = micro_config()
    c.vae.perceptual.weight = 2.0
    c.vae.perceptual.path = path
    c.vae.train.batch_size = 2
    config_lib.validate(c)
    model, tx = builders.build_vae(c), ts.make_optimizer(c.vae.train)
    state = vae_trainer.init_state(c, model, tx, mesh_lib.create_mesh(1))
    step = jax.jit(
        vae_trainer.make_train_step(model, tx, c.vae, perceptual=vae_trainer.build_perceptual(c))
    )
    _, m = step(state, vae_trainer.vae_batch(c, 0), jax.random.PRNGKey(0))
    rec = m["l1"] + c.vae.mse_weight * m["mse"] + c.vae.kl_weight * m["kl"]
    assert float(m["lpips"]) > 0
    np.testing.assert_allclose(m["loss"], rec + 2.0 * m["lpips"], rtol=1e-5)
    c.vae.perceptual.path = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        vae_trainer.build_perceptual(c)


def test_latent_stats_stored_with_the_checkpoint_and_restored(tmp_path):
    from sora_jax import train  # noqa: PLC0415

    c = micro_config(vae_steps=2)
    c.stages = ("vae",)
    c.vae.latent_stats_batches = 2
    train.train_and_evaluate(c, str(tmp_path))
    mesh = mesh_lib.create_mesh(1)
    model, state = vae_trainer.load_state(c, str(tmp_path), mesh)
    mean, std = vae_trainer.latent_stats(c, model, state.ema_params)
    np.testing.assert_allclose(state.extras["latent_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.extras["latent_std"], std, rtol=1e-5)
    assert np.all(std > 0) and not np.allclose(mean, 0) and not np.allclose(std, 1)
    # ... equal to the statistics of the encoded batches computed directly.
    encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode)[0])
    zs = [
        np.asarray(encode(state.ema_params, x))
        for i in range(2)
        for x in vae_trainer.vae_batch(c, c.vae.train.steps + i).values()
    ]
    flat = np.concatenate([z.reshape(-1, z.shape[-1]) for z in zs])
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-4)

    # A checkpoint from before the statistics were stored (no extras) still loads; they are
    # then computed from the data.
    old_dir = tmp_path / "old"
    old = ts.create(state.ema_params, ts.make_optimizer(c.vae.train))
    ckpt = checkpoint.for_stage(c, str(old_dir), "vae")
    ckpt.save(2, old, force=True)
    ckpt.close()
    _, restored = vae_trainer.load_state(c, str(old_dir), mesh)
    np.testing.assert_allclose(restored.extras["latent_std"], std, rtol=1e-5)
