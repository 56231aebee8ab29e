"""Training a public Wan model in sora_jax: a diffusers Wan folder as the models of a run
(config.init.from_pretrained), the Wan transformer on packed rows behind the DiT interface
against diffusers' forward, its weights read per device slice, and the train CLI end to end."""

from __future__ import annotations

import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import sora_jax

torch = pytest.importorskip("torch", reason="parity tests need torch (test extra)")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers (test extra)")
pytest.importorskip("transformers", reason="the tokenizer needs transformers")

from sora_jax import config as config_lib  # noqa: E402
from sora_jax import train  # noqa: E402
from sora_jax.data import packing, shapes  # noqa: E402
from sora_jax.inference import exporter, loader, wan_pipeline  # noqa: E402
from sora_jax.inference import pipeline as pipeline_lib  # noqa: E402
from sora_jax.models import builders, lora, wan_dit, wan_folder, wan_presets  # noqa: E402
from sora_jax.models import wan_transformer as wt  # noqa: E402
from sora_jax.models import wan_transformer_weights as ww  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402
from sora_jax.parallel import partitioning  # noqa: E402
from sora_jax.text import encoders  # noqa: E402
from sora_jax.training import dit_trainer, finetune, planning  # noqa: E402
from sora_jax.training import train_state as ts  # noqa: E402
from test_train import TINY, micro_config, run_cli  # noqa: E402
from dit_setup import fixed_batch  # noqa: E402
from wan_setup import tiny_pipeline  # noqa: E402

# The captions of the built-in set are the tokenizer's words, so prompts are not <unk>.
WORDS = sorted(set(shapes.VOCABULARY) - {"<pad>", "<unk>", "</s>"})
# Micro run on the Wan folder: 16 x 16 / 16 x 32 clips of 1 and 5 frames (Wan 2.1's 4x8x8
# VAE, patch 1x2x2: 1-2 tokens per latent frame).
OVERRIDES = {
    "stages": ("dit",),
    "data.resolutions": ((16, 16), (16, 32)),
    "text.max_length": 16,
    "dit.model.remat_policy": "none",
    "dit.text_tokens": 0,
    "dit.condition.rate": 0.25,
    "sample.num_frames": 5,
    "sample.height": 16,
    "sample.width": 32,
    "eval.at_end": False,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("wan"), words=WORDS)


def _config(path, overrides=OVERRIDES, variant="micro"):
    c = config_lib.load_with_arg(TINY, variant)
    c.init.from_pretrained = path
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config_lib.validate(c)


def test_the_folder_becomes_the_runs_models(folder):
    pipe, path = folder
    c = _config(path)
    assert (c.vae.kind, c.text.kind, c.dit.model.arch) == ("wan", "t5", "wan")
    assert c.text.path == os.path.join(path, "text_encoder")
    assert tuple(c.dit.patch) == (1, 2, 2) and c.vae.model.latent_channels == 4
    assert tuple(c.vae.model.channel_mults) == (1, 1, 1, 1)
    cfg = wan_folder.transformer_config(c)
    assert cfg == wt.WanTransformerConfig.from_diffusers(dict(pipe.transformer.config))
    # Resolving again (a workdir's saved config) changes nothing.
    assert json.loads(config_lib.validate(c).to_json()) == json.loads(c.to_json())
    mean, std = wan_folder.latent_stats(c)
    np.testing.assert_array_equal(mean, np.float32([0.1, -0.2, 0.3, 0.0]))
    np.testing.assert_array_equal(std, np.float32([1.5, 0.5, 2.0, 1.0]))
    # A config whose own VAE has another spatial layout (the tiny one: a 2x2 stem, one level
    # that keeps the resolution) takes the folder's geometry whole.
    tiny = _config(path, variant="")
    assert (tiny.vae.model.patch_size, tuple(tiny.vae.model.spatial_downsample)) == (1, ())
    assert tuple(tiny.vae.model.channel_mults) == (1, 1, 1, 1)


def test_wan_settings_are_checked(folder, tmp_path):
    _, path = folder
    c = config_lib.load_with_arg(TINY, "micro")
    c.init.from_pretrained = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"config.init.from_pretrained=.*nothing: no model_index"):
        config_lib.validate(c)
    for key, value, why in [
        ("stages", ("vae", "dit"), "the Wan VAE is loaded frozen, not trained"),
        ("dit.finetune.mode", "lora", "matches no layer of the Wan transformer"),
        ("diffusion.objective", "ddpm", "predicts the flow velocity"),
        ("dit.model.remat_policy", "dots_saveable", "must be one of"),
    ]:
        c = config_lib.load_with_arg(TINY, "micro")
        c.init.from_pretrained = path
        for k, v in OVERRIDES.items():
            if k != key:
                *parents, leaf = k.split(".")
                node = c
                for name in parents:
                    node = node[name]
                node[leaf] = v
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node[name]
        node[leaf] = value
        with pytest.raises(ValueError, match=why):
            config_lib.validate(c)


def test_packed_rows_equal_diffusers_forward_per_video(folder):
    """Two videos (and a given first latent frame for one) in one row through WanDiT equal
    diffusers' WanTransformer3DModel on each video alone, at timestep t * 1000 and with the
    caption states zeroed past the prompt (Wan's training input), to 1e-4."""
    pipe, path = folder
    c = _config(path)
    text_encoder = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text_encoder.dim)
    params = ww.load_transformer(os.path.join(path, "transformer"))[1]
    rng = np.random.default_rng(0)
    grids = [(2, 2, 4), (1, 4, 2)]  # latent (t, h, w) of two videos, 4 channels
    videos = [rng.standard_normal((*g, 4)).astype(np.float32) for g in grids]
    times = np.float32([0.7, 0.25])
    prompts = ["a red circle moves left", "a large blue square moves up quickly"]
    ids, mask = text_encoder.tokenize(prompts)
    states = np.asarray(text_encoder.encode(text_encoder.params, ids, mask))
    rows = [packing.patchify(v, tuple(c.dit.patch)) for v in videos]
    tokens = np.concatenate([r[0] for r in rows] + [np.zeros((3, 16), np.float32)])
    seg = np.concatenate([np.full(len(r[0]), i + 1) for i, r in enumerate(rows)] + [[0] * 3])
    pos = np.concatenate([r[1] for r in rows] + [np.zeros((3, 3), np.int32)])
    # The second video's first latent frame is given (clean, t = 0), as in image->video.
    cond = np.zeros(len(seg), bool)
    first = len(rows[0][0])
    cond[first : first + 2] = True
    out = dit.apply(
        {"params": {"transformer": params}},
        jnp.asarray(tokens[None]),
        jnp.asarray(times[None]),
        jnp.asarray(seg[None], jnp.int32),
        jnp.asarray(pos[None], jnp.int32),
        jnp.asarray(states[None]),
        jnp.asarray(np.asarray(mask)[None]),
        cond_mask=jnp.asarray(cond[None]),
    )[0]
    np.testing.assert_array_equal(np.asarray(out[seg == 0]), 0.0)
    start = 0
    for i, (video, (tok, _)) in enumerate(zip(videos, rows)):
        n = len(tok)
        hidden = np.where(np.asarray(mask[i])[:, None], states[i], 0.0)
        timestep = np.full((1, n), times[i] * 1000.0, np.float32)
        if i == 1:
            timestep[0, :2] = 0.0  # diffusers' per-token (expand_timesteps) form
        with torch.no_grad():
            want = pipe.transformer(
                hidden_states=torch.from_numpy(np.moveaxis(video, -1, 0)[None].copy()),
                timestep=torch.from_numpy(timestep if i == 1 else timestep[:, 0]),
                encoder_hidden_states=torch.from_numpy(hidden[None]),
                return_dict=False,
            )[0].numpy()
        token_grid = (grids[i][0], grids[i][1] // 2, grids[i][2] // 2)
        got = wt.unpatchify(out[None, start : start + n], token_grid, (1, 2, 2))[0]
        np.testing.assert_allclose(np.asarray(got), np.moveaxis(want[0], 0, -1), atol=1e-4)
        start += n
    # Not trivially: another time gives another output.
    other = dit.apply(
        {"params": {"transformer": params}},
        jnp.asarray(tokens[None]),
        jnp.asarray(times[None] * 0.5),
        jnp.asarray(seg[None], jnp.int32),
        jnp.asarray(pos[None], jnp.int32),
        jnp.asarray(states[None]),
        jnp.asarray(np.asarray(mask)[None]),
    )[0]
    assert np.abs(np.asarray(other - out)[seg > 0]).max() > 1e-2
    assert isinstance(dit, wan_dit.WanDiT)


def test_weights_are_read_per_device_slice(folder):
    """On an fsdp x tensor mesh each param arrives with the train state's sharding and the
    folder's values; a mis-shaped or missing tensor is an error naming its key."""
    _, path = folder
    c = _config(path)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2
    mesh = mesh_lib.from_config(c.mesh)
    text_encoder = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text_encoder.dim)
    boxed = builders.abstract_dit_params(c, dit, text_encoder)["dit"]["transformer"]
    rules = partitioning.rules_from_config(c.mesh.rules)
    shardings = partitioning.shardings(boxed, mesh, rules)
    target = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nn.unbox(boxed),
        shardings,
    )
    got = ww.load_sharded(os.path.join(path, "transformer"), target)
    want = ww.load_transformer(os.path.join(path, "transformer"))[1]
    flat_got = flax.traverse_util.flatten_dict(got)
    flat_want = flax.traverse_util.flatten_dict(want)
    flat_sh = flax.traverse_util.flatten_dict(shardings)
    assert set(flat_got) == set(flat_want)
    split = 0
    for k, v in flat_got.items():
        assert v.sharding == flat_sh[k], k
        np.testing.assert_array_equal(np.asarray(v), np.asarray(flat_want[k]), err_msg=str(k))
        split += not v.sharding.is_fully_replicated
    assert split > 10  # most weights really are split across devices
    wrong = jax.tree.map(lambda s: s, target)
    wrong["blocks_0"]["ffn"]["proj_in"]["kernel"] = jax.ShapeDtypeStruct(
        (16, 33), jnp.float32, sharding=mesh_lib.replicated(mesh)
    )
    with pytest.raises(ValueError, match="ffn.net.0.proj.weight is"):
        ww.load_sharded(os.path.join(path, "transformer"), wrong)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """A workdir of `python -m sora_jax.train` fine-tuning the folder's model 2 steps, then
    resumed to 3: (workdir, the stderr of each run or None where it succeeded)."""
    _, path = folder
    workdir = str(tmp_path_factory.mktemp("wan_run") / "run")
    flags = [f"--config={TINY}:micro", f"--workdir={workdir}"]
    flags += [f"--config.init.from_pretrained={path}"]
    for key, value in OVERRIDES.items():
        flags.append(f"--config.{key}={json.dumps(value) if isinstance(value, tuple) else value}")
    checkpoints = os.path.join(workdir, "dit", "checkpoints")
    runs = []
    for steps in (2, 3):  # the same command with more steps resumes
        r = run_cli("sora_jax.train", *flags, f"--config.dit.train.steps={steps}")
        runs.append(sorted(int(s) for s in os.listdir(checkpoints)) if r.returncode == 0 else r)
    return workdir, runs


def test_train_cli_fine_tunes_the_wan_model_and_samples(folder, trained, tmp_path):
    """`python -m sora_jax.train --config.init.from_pretrained=FOLDER` trains the Wan
    transformer on packed built-in videos (the Wan VAE frozen, its statistics), checkpoints,
    resumes, and the workdir samples through the project's pipeline."""
    _, path = folder
    workdir, runs = trained
    for r in runs:
        assert isinstance(r, list), r.stderr[-3000:]
    assert runs[0][-1] == 2 and runs[1][-2:] == [2, 3]
    saved = config_lib.load_saved(workdir)
    assert saved.vae.kind == "wan" and saved.dit.model.arch == "wan"
    assert os.path.isdir(os.path.join(workdir, "samples"))
    pipe = pipeline_lib.load_pipeline(workdir)
    model = pipe.model
    assert model.steps["dit_step"] == 3
    start = ww.load_transformer(os.path.join(path, "transformer"))[1]
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), model.params["dit"]["transformer"], start
    )
    assert 0 < max(jax.tree.leaves(moved)) < 0.1  # trained, from the folder's weights
    np.testing.assert_array_equal(model.latent_std, np.float32([1.5, 0.5, 2.0, 1.0]))
    args = dict(num_frames=5, height=16, width=32, seed=0)
    video = pipe.generate(["a red circle moves left"], **args)
    assert video.shape == (1, 5, 16, 32, 3) and video.std() > 0
    # The project's export of the run (the Wan VAE's weights in it) samples the same video.
    out = exporter.export_workdir(workdir, str(tmp_path / "export"))
    again = sora_jax.load_pipeline(out).generate(["a red circle moves left"], **args)
    np.testing.assert_array_equal(again, video)


def test_a_wan22_ti2v_folder_trains_image_to_video_and_samples(tmp_path):
    """A Wan 2.2 TI2V-style folder (residual 4x16x16 VAE with 2x2 patchified pixels,
    expand_timesteps) trains as image->video: its geometry is read from the folder, the given
    first latent frame takes t = 0, and the run samples from a given image."""
    pipe, path = tiny_pipeline(tmp_path / "wan22", words=WORDS, wan22=True)
    first = dict(first=1.0, first_k=0.0, last_k=0.0, both_ends=0.0, random=0.0)
    c = _config(
        path,
        dict(
            OVERRIDES,
            **{
                "data.resolutions": ((32, 32), (32, 64)),
                "vae.train.buckets": ((5, 32, 32),),  # checked, though the Wan VAE is frozen
                "sample.height": 32,
                "sample.width": 64,
                "dit.condition.rate": 1.0,
                "dit.condition.mask_types": first,
                "dit.train.steps": 2,
            },
        ),
    )
    assert tuple(c.vae.model.channel_mults) == (1, 1, 1, 1) and c.vae.model.patch_size == 2
    workdir = str(tmp_path / "run")
    history = train.train_and_evaluate(c, workdir)["dit"]
    assert [s for s, _ in history] == [1, 2] and all(np.isfinite(m["loss"]) for _, m in history)
    run = pipeline_lib.load_pipeline(workdir)
    start = ww.load_transformer(os.path.join(path, "transformer"))[1]
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), run.model.params["dit"]["transformer"], start
    )
    assert 0 < max(jax.tree.leaves(moved))  # trained, from the folder's weights
    image = shapes.render(shapes.attributes_for_prompt("circle", "red", "large"), 1, 32, 64)[0]
    size = dict(num_frames=5, height=32, width=64)
    video = run.image_to_video(["a red circle moves left", "a blue square moves up"], image, **size)
    assert video.shape == (2, 5, 32, 64, 3)
    # The given frame is kept (clean, at t = 0) whatever the prompt; the rest follows it.
    np.testing.assert_array_equal(video[0, 0], video[1, 0])
    assert not np.array_equal(video[0, 1:], video[1, 1:])


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in model.state_dict().items()}


def test_export_as_diffusers_folder_round_trips(folder, trained, tmp_path):
    """`python -m sora_jax.export --format=diffusers` writes the fine-tuned run as a folder
    diffusers' WanPipeline loads: its transformer holds the run's EMA weights bit for bit (and
    runs as ours, 1e-4), the other models are the base folder's; the folder loads back into
    sora_jax exactly (`load_pipeline`, `init.from_pretrained`); bf16 is the weights rounded."""
    pipe, path = folder
    workdir, _ = trained
    out = str(tmp_path / "wan_ft")
    r = run_cli(
        "sora_jax.export", f"--workdir={workdir}", f"--out={out}", "--format=diffusers",
        "--max_shard_gb=0.00002",  # ~21 KB: the tiny (48 KB) transformer in shards
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "transformer", ww.INDEX_NAME))
    model = loader.load_workdir(workdir)
    ours = flax.traverse_util.flatten_dict(model.params["dit"]["transformer"])
    loaded = diffusers.WanPipeline.from_pretrained(out)
    got = _state_dict(loaded.transformer)
    want = ww.to_state_dict(model.params["dit"]["transformer"], wan_folder.transformer_config(
        config_lib.load_saved(workdir)
    ))  # fmt: skip
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for name in ("vae", "text_encoder"):
        base, exported = _state_dict(getattr(pipe, name)), _state_dict(getattr(loaded, name))
        assert base.keys() == exported.keys()
        for k in base:
            np.testing.assert_array_equal(exported[k], base[k], err_msg=f"{name}: {k}")
    assert json.load(open(os.path.join(out, exporter.DIFFUSERS_SOURCE)))["dit_step"] == 3
    # diffusers runs the exported transformer as sora_jax runs the fine-tuned one.
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    text = rng.standard_normal((1, 6, 32)).astype(np.float32)
    module, _ = ww.load_transformer(os.path.join(out, "transformer"))
    mine = module.apply(
        {"params": model.params["dit"]["transformer"]},
        jnp.asarray(latents), jnp.float32([400.0]), jnp.asarray(text), method=module.video,
    )  # fmt: skip
    with torch.no_grad():
        theirs = loaded.transformer(
            hidden_states=torch.from_numpy(np.moveaxis(latents, -1, 1).copy()),
            timestep=torch.tensor([400.0]),
            encoder_hidden_states=torch.from_numpy(text),
            return_dict=False,
        )[0].numpy()
    np.testing.assert_allclose(np.asarray(mine)[0], np.moveaxis(theirs[0], 0, -1), atol=1e-4)
    # Back into sora_jax: the exported folder samples, and starts a further run, exactly.
    wan = sora_jax.load_pipeline(out)
    assert isinstance(wan, wan_pipeline.WanPipeline)
    back = flax.traverse_util.flatten_dict(wan.transformer_params)
    assert back.keys() == ours.keys()
    for k in ours:
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(ours[k]), err_msg=str(k))
    assert wan_folder.transformer_config(_config(out)) == wan_folder.transformer_config(
        _config(path)
    )
    # bfloat16: half the bytes, the same weights rounded.
    half = exporter.save_diffusers(model, str(tmp_path / "bf16"), bf16=True)
    got = _state_dict(
        diffusers.WanTransformer3DModel.from_pretrained(half, subfolder="transformer")
    )
    for k in want:
        np.testing.assert_array_equal(got[k], want[k].astype(ml_dtypes.bfloat16).astype(np.float32))
    # Errors: a run of the project's own DiT, the base folder itself, a folder of something else.
    project_run = str(tmp_path / "dit_run")
    config_lib.save(micro_config(), project_run)
    with pytest.raises(ValueError, match="has no diffusers class"):
        exporter.export_diffusers(project_run, str(tmp_path / "x"))
    with pytest.raises(FileExistsError, match="the Wan folder the run started from"):
        exporter.save_diffusers(model, path, overwrite=True)
    with pytest.raises(FileExistsError, match="is not a Wan folder; will not replace"):
        exporter.export_diffusers(workdir, project_run, overwrite=True)
    r = run_cli("sora_jax.export", f"--workdir={workdir}", f"--out={out}2", "--format=diffusers",
                "--adapters_only")  # fmt: skip
    assert r.returncode != 0 and "drop --adapters_only" in r.stderr


@pytest.mark.parametrize(
    "name, preset",
    [
        ("wan2_1_t2v_1_3b.py", "WAN_2_1_T2V_1_3B"),
        ("wan2_1_t2v_14b.py", "WAN_2_1_T2V_14B"),
        ("wan2_2_ti2v_5b.py", "WAN_2_2_TI2V_5B"),
    ],
)
def test_public_model_configs_plan_without_weights(name, preset):
    """The named configs validate and plan with no folder: the parameter count equals
    diffusers' WanTransformer3DModel of the same architecture (built on the meta device), and
    training them asks for the folder in one line."""
    c = config_lib.validate(config_lib.load(os.path.join(os.path.dirname(TINY), name)))
    arch = getattr(wan_presets, preset)
    with torch.device("meta"):
        ref = diffusers.WanTransformer3DModel(**arch)
    want = sum(p.numel() for p in ref.parameters())
    p = planning.plan(c, {"data": 1, "fsdp": 8, "tensor": 1, "sequence": 1}, "v5p", count_xla=False)
    assert p["dit_params"] == want
    # fsdp 8 splits the weights 8 ways; the text embedder's input projection, the norms and
    # the tables stay whole (4 % of the 1.3B's eighth).
    per_chip = p["per_device"]["param_bytes"]
    assert 4 * want / 8 <= per_chip < 1.05 * 4 * want / 8
    with pytest.raises(ValueError, match="needs the path of a local Hugging Face model folder"):
        encoders.check_folder(c)
    with pytest.raises(ValueError, match="--config.init.from_pretrained=FOLDER"):
        wan_folder.check_trainable(c)


def test_lora_on_the_wan_transformer(folder, tmp_path):
    """A LoRA fine-tune of the Wan model: adapters on the matched layers only, the folder's
    weights under fresh adapters give the folder's model exactly, only adapters are in the
    optimizer, and merging trained adapters gives base + adapters (1e-5); targets that match
    no Wan layer are rejected."""
    _, path = folder
    c = _config(path)
    c.dit.finetune.mode = "lora"
    with pytest.raises(ValueError, match="matches no layer of the Wan transformer"):
        config_lib.validate(c)
    c.dit.finetune.lora_targets = r"attn1\.to_(q|v)|ffn\.proj_in"
    c.dit.finetune.lora_rank = 2
    c = config_lib.validate(c)
    mesh = mesh_lib.create_mesh(1)
    text_encoder = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text_encoder.dim)
    abstract = nn.unbox(builders.abstract_dit_params(c, dit, text_encoder))
    tx = finetune.optimizer(c, ts.make_optimizer(c.dit.train), abstract)
    state = dit_trainer.init_state(c, dit, text_encoder, tx, mesh, None)
    state = finetune.from_pretrained(c, state)
    flat = flax.traverse_util.flatten_dict(state.params["dit"]["transformer"])
    adapted = sorted("/".join(k[:-1]) for k in flat if k[-1] == "lora_a")
    assert adapted == [
        f"{b}/{layer}" for b in ("blocks_0", "blocks_1")
        for layer in ("attn1/to_q", "attn1/to_v", "ffn/proj_in")
    ]  # fmt: skip
    # Adam's two moments for each adapter leaf and nothing else.
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "ndim", 0) >= 1]
    assert len(moments) == 2 * 2 * len(adapted)
    base_params, _ = lora.split(state.params["dit"]["transformer"])
    want = ww.load_transformer(os.path.join(path, "transformer"))[1]
    jax.tree.map(np.testing.assert_array_equal, base_params, want)

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((1, 8, 16)), jnp.float32)
    seg = jnp.ones((1, 8), jnp.int32)
    pos = jnp.asarray(np.stack(np.unravel_index(np.arange(8), (2, 2, 2)), -1)[None], jnp.int32)
    t = jnp.full((1, 1), 0.6)
    ids, mask = text_encoder.tokenize(["a red circle moves left"])
    text = text_encoder.encode(text_encoder.params, ids, mask)[:, None]
    args = (x, t, seg, pos, text, jnp.asarray(mask)[:, None])
    plain = builders.build_dit(_config(path), text_encoder.dim)
    ref = plain.apply({"params": {"transformer": want}}, *args)
    out = dit.apply({"params": state.params["dit"]}, *args)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))  # B = 0: the base exactly
    trained_params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.05 if p[-1].key == "lora_b" else v, state.params["dit"]
    )
    moved = dit.apply({"params": trained_params}, *args)
    assert np.abs(np.asarray(moved - ref)).max() > 1e-3
    merged = lora.merge(trained_params, builders.lora_spec(c))
    np.testing.assert_allclose(
        np.asarray(plain.apply({"params": merged}, *args)), np.asarray(moved), atol=1e-5
    )
    # A LoRA run exports to diffusers with its adapters merged: a plain Wan transformer.
    model = loader.InferenceModel(
        config=c, vae=None, vae_params=None, dit=dit, text_encoder=text_encoder,
        params={"dit": trained_params}, latent_mean=None, latent_std=None, name="lora",
    )  # fmt: skip
    out = exporter.save_diffusers(model, str(tmp_path / "merged"))
    exported = ww.load_transformer(os.path.join(out, "transformer"))[1]
    jax.tree.map(np.testing.assert_array_equal, exported, merged["transformer"])


def test_fine_tuning_steps_lower_the_loss_on_a_packed_batch(folder):
    """From the folder's weights, three train steps on one packed batch of four video sizes
    lower its loss (the same times and noise each step)."""
    _, path = folder
    c = _config(path)
    c.dit.train.warmup_steps, c.dit.train.learning_rate = 1, 3e-3
    text_encoder = builders.build_text_encoder(c)
    dit = builders.build_dit(c, text_encoder.dim)
    abstract = nn.unbox(builders.abstract_dit_params(c, dit, text_encoder))
    tx = finetune.optimizer(c, ts.make_optimizer(c.dit.train), abstract)
    state = dit_trainer.init_state(c, dit, text_encoder, tx, mesh_lib.create_mesh(1), None)
    state = finetune.from_pretrained(c, state)
    batch = fixed_batch(c)
    assert len(np.unique(batch["segment_ids"][0])) > 3  # several videos share a row
    step = jax.jit(dit_trainer.make_train_step(c, dit, text_encoder, tx, text_encoder.params))
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[3] < 0.97 * losses[0], losses
