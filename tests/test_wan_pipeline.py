"""A whole Wan text->video pipeline against diffusers' `WanPipeline` (tiny random models: VAE,
transformer, UMT5 with a locally built tokenizer, UniPC or flow-match Euler scheduler), saved with
`save_pretrained` and loaded with `sora_jax.inference.wan_pipeline.load_folder`."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (test extra)")
diffusers = pytest.importorskip("diffusers", reason="parity tests need diffusers (test extra)")
transformers = pytest.importorskip("transformers", reason="the tokenizer needs transformers")

from sora_jax.data import video_io  # noqa: E402
from sora_jax.inference import wan_pipeline  # noqa: E402
from test_train import run_cli  # noqa: E402

from wan_setup import LATENT, NEGATIVE, PROMPT, SIZE  # noqa: E402
from wan_setup import scheduler as _scheduler  # noqa: E402
from wan_setup import tiny_pipeline as _pipeline  # noqa: E402


def _diffusers_video(pipe, noise, steps, guidance):
    latents = torch.from_numpy(np.ascontiguousarray(np.moveaxis(noise, -1, 1)))
    out = pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        latents=latents,
        num_inference_steps=steps,
        guidance_scale=guidance,
        max_sequence_length=16,
        output_type="np",
        **SIZE,
    )
    return np.asarray(out.frames, np.float32)


@pytest.mark.parametrize(
    "kind,shift,steps,guidance",
    [("unipc", 3.0, 6, 5.0), ("unipc", 5.0, 4, 1.0), ("euler", 3.0, 5, 4.0)],
)
def test_pipeline_matches_diffusers(tmp_path, kind, shift, steps, guidance):
    pipe, folder = _pipeline(tmp_path, kind, shift)
    ours = wan_pipeline.load_folder(folder, max_sequence_length=16)
    assert ours.scheduler.sampler == ("unipc" if kind == "unipc" else "euler")
    noise = np.random.default_rng(steps).standard_normal((1, *LATENT)).astype(np.float32)
    want = _diffusers_video(pipe, noise, steps, guidance)
    got = ours.generate(
        [PROMPT],
        negative_prompts=[NEGATIVE],
        steps=steps,
        guidance_scale=guidance,
        noise=jnp.asarray(noise),
        **SIZE,
    )
    assert got.shape == want.shape == (1, 5, 32, 32, 3)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    # Not trivially so: the video depends on the prompt and on the solver.
    other = ours.generate(["a blue square moves up"], steps=steps, noise=jnp.asarray(noise), **SIZE)
    assert np.abs(other - want).max() > 1e-2


def test_prompt_states_match_diffusers(tmp_path):
    pipe, folder = _pipeline(tmp_path)
    ours = wan_pipeline.load_folder(folder, max_sequence_length=16)
    prompts = [PROMPT, "", "a green square moves right"]
    want, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=16)
    got = np.asarray(ours.encode_prompts(prompts))
    assert got.shape == (3, 16, 32)
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-5, rtol=0)
    assert np.all(got[1, 1:] == 0)  # "" is </s> alone; the rest is zero, as diffusers pads


def test_clean_prompt_and_timesteps():
    assert wan_pipeline.clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"
    ts = np.array([1.0 - 1e-6, 0.8, 0.2999999, 0.0])
    np.testing.assert_array_equal(wan_pipeline.model_timesteps(ts, True), [999.0, 800.0, 299.0])
    np.testing.assert_allclose(wan_pipeline.model_timesteps(ts, False), [999.999, 800.0, 299.9999])


@pytest.mark.parametrize("kind", ["unipc", "euler"])
@pytest.mark.parametrize("shift,steps", [(3.0, 5), (5.0, 30), (1.0, 8)])
def test_time_grid_is_the_schedulers(kind, shift, steps):
    scheduler = _scheduler(kind, shift)
    scheduler.set_timesteps(steps)
    want = scheduler.sigmas.numpy()
    got = wan_pipeline.Scheduler(kind, shift, kind == "unipc", kind).time_grid(steps)
    assert got.shape == (steps + 1,)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_scheduler_settings_are_checked(tmp_path):
    path = tmp_path / "scheduler_config.json"
    config = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 5.0, "solver_order": 2}
    path.write_text(json.dumps(config))
    assert wan_pipeline.read_scheduler(str(tmp_path)) == wan_pipeline.Scheduler(
        "unipc", 5.0, True, "unipc"
    )
    path.write_text(json.dumps(dict(config, solver_order=3)))
    with pytest.raises(ValueError, match="solver_order=3 is not supported"):
        wan_pipeline.read_scheduler(str(tmp_path))
    path.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="scheduler 'DDIMScheduler' is not one of"):
        wan_pipeline.read_scheduler(str(tmp_path))


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        wan_pipeline.load_folder(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert wan_pipeline.is_wan_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing the vae/ folder"):
        wan_pipeline.load_folder(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert not wan_pipeline.is_wan_folder(str(tmp_path))
    with pytest.raises(ValueError, match="is not a Wan pipeline"):
        wan_pipeline.load_folder(str(tmp_path))
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "WanPipeline",
                "transformer_2": ["diffusers", "WanTransformer3DModel"],
            }
        )
    )
    with pytest.raises(ValueError, match="two-expert pipeline"):
        wan_pipeline.load_folder(str(tmp_path))


def test_sample_cli_writes_the_pipelines_video(tmp_path):
    _, folder = _pipeline(tmp_path)
    args = ["--frames=5", "--height=32", "--width=32", "--steps=3", "--seed=1"]
    r = run_cli("sora_jax.sample", f"--workdir={folder}", f"--prompt={PROMPT}", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = r.stdout.split()
    got = video_io.read_video(path).astype(np.float32) / 255.0
    want = wan_pipeline.load_folder(folder).generate(
        [PROMPT], steps=3, seed=1, guidance_scale=5.0, **SIZE
    )[0]
    assert got.shape == want.shape == (5, 32, 32, 3)
    # h264 loses much of a 32 x 32 noise-like video: compare with the same video encoded here.
    ref = str(tmp_path / "ref.mp4")
    video_io.write_video(ref, (want * 255.0 + 0.5).astype(np.uint8), fps=16)
    ref = video_io.read_video(ref).astype(np.float32) / 255.0
    assert np.abs(got - ref).max() <= 3 / 255
    assert np.abs(got - want).mean() < 0.1
    r = run_cli("sora_jax.sample", f"--workdir={folder}", "--prompt=x", "--image=a.png")
    assert r.returncode != 0
    assert "--image: a Wan folder samples text->video only" in r.stderr.strip().splitlines()[-1]
