r"""Sampling CLI: text -> video files (mp4 and gif) from a trained workdir or an exported
checkpoint (`python -m sora_jax.export`), plus an index.html gallery of the output folder.

  python -m sora_jax.sample --workdir=runs/tiny \
      --prompt "a large red circle moves right steadily on a grey background" \
      --frames 9 --height 32 --width 48 --seed 0 [--out runs/tiny/cli_samples] \
      [--sampler dpmpp_2m --steps 10 --spacing shifted --time_shift 2 --eta 0 \
       --guidance_scale 4 --guidance_interval 0.1,0.9 --guidance_rescale 0.7]

Sampling flags left out take their value from the workdir's config.diffusion.

--adapters=DIR merges a LoRA fine-tune's adapters (`python -m sora_jax.export --adapters_only`)
into the DiT of --workdir (the base they were trained on, or any DiT of the same shapes).

Generation modes (given frames are resized to --height x --width and kept in the output):

  --image first.png                          image->video (the image is the first frame)
  --video a.mp4 --extend forward             the last frames of a.mp4 start the new video
  --video a.mp4 --extend backward            the first frames of a.mp4 end the new video
  --connect a.mp4 b.mp4                      the end of a, then the model, then the start of b
  --video a.mp4 --edit 0.6                   SDEdit: a.mp4 noised to t = 0.6, re-denoised
                                             under --prompt (0: a's VAE round trip, 1: ignored)

--context_frames sets how many frames are given (extend: one number, 1 + 4k forward and 4k
backward for a 4x temporal VAE; connect: two numbers a,b); by default about half the video
(extend) or a quarter at each end (connect).

--expand_prompt rewrites each prompt in the training captions' style first (a local LM from
--prompt_lm, else the built-in moving-shapes expander; deterministic by --seed) and writes
SAMPLE.json beside each sample with the prompt, its expansion and how it was made. By default
(config.sample.expand_prompt='auto') it is on for the built-in text encoder, whose vocabulary
is the captions', and off for a pretrained one; --noexpand_prompt samples prompts as written.

--mesh samples on a device mesh (default: config.sample.mesh, '' = one device): 'config' for
the workdir's config.mesh, or axis sizes such as `--mesh=data:2,sequence:4` (one may be -1).
The DiT params are sharded by config.mesh.rules, CFG's conditional and unconditional rows are
split over the batch axes and each row along its length over 'sequence'. --shard_tiles (default:
config.vae.inference.shard_tiles) decodes in tiles (vae.inference.tile_latent_size / overlap)
whose rows are spread over the mesh's devices, the video split along its height; --tiles=16,4
sets the tile size and overlap (latent pixels).

A local diffusers Wan folder (WanPipeline: model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/) samples text->video with that model: --frames/--height/--width default
to 81/480/832, --steps to 50, --guidance to 5, --sampler and --time_shift to its scheduler's;
one mp4 per prompt at 16 fps (the modes above and the mesh flags are not available there).

Any duration, resolution and aspect ratio the model supports: height and width
must be multiples of the VAE's spatial compression times the patch size; frame
counts the causal VAE cannot produce are rounded up and trimmed.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from sora_jax import config as config_lib
from sora_jax.common import cli
from sora_jax.inference import prompts as prompts_lib
from sora_jax.data import video_io
from sora_jax.diffusion import objectives, samplers
from sora_jax.inference import pipeline as pipeline_lib
from sora_jax.inference import samples, wan_pipeline
from sora_jax.models import geometry, vae_inference
from sora_jax.parallel import mesh as mesh_lib

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir or exported checkpoint folder (config + weights)."
)
_ADAPTERS = flags.DEFINE_string(
    "adapters", None, "LoRA adapters folder (export --adapters_only) to apply to --workdir's DiT."
)
_PROMPT = flags.DEFINE_multi_string("prompt", None, "Text prompt (repeat for several).")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "Prompt to steer away from (CFG).")
_FRAMES = flags.DEFINE_integer("frames", None, "Number of frames (default: config.sample).")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels (default: config.sample).")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels (default: config.sample).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed: the same seed gives the same video.")
_SAMPLER = flags.DEFINE_enum(
    "sampler", None, list(samplers.SAMPLERS), "Sampler (default: config.diffusion.sampler)."
)
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (default: config.diffusion).")
_SPACING = flags.DEFINE_enum(
    "spacing", None, list(samplers.SPACINGS), "Time grid (default: config.diffusion.spacing)."
)
_SHIFT = flags.DEFINE_float("time_shift", None, "Time shift s of the 'shifted' spacing.")
_ETA = flags.DEFINE_float("eta", None, "DDIM eta: 0 deterministic, 1 ancestral (ddim only).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "CFG scale (default: config.diffusion).")
flags.DEFINE_alias("guidance_scale", "guidance")
_INTERVAL = flags.DEFINE_list(
    "guidance_interval", None, "t_lo,t_hi: apply CFG only for t in [t_lo, t_hi] (1 = noise)."
)
_RESCALE = flags.DEFINE_float("guidance_rescale", None, "CFG std rescale phi in [0, 1].")
_COND_NOISE = flags.DEFINE_float(
    "condition_noise", None, "Time of given frames in [0, 1) (default: config.diffusion)."
)
_OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/cli_samples).")
_IMAGE = flags.DEFINE_string("image", None, "Image->video: the first frame (.png, .jpg, ...).")
_VIDEO = flags.DEFINE_string("video", None, "Video to --extend or to --edit (.mp4, .gif).")
_EXTEND = flags.DEFINE_enum(
    "extend", None, ["forward", "backward"], "Extend --video forward or backward in time."
)
_CONNECT = flags.DEFINE_list("connect", None, "Two videos a,b (or `--connect a b`) to connect.")
_EDIT = flags.DEFINE_float("edit", None, "SDEdit strength in [0, 1] for --video.")
_FACTORIZED = flags.DEFINE_bool(
    "factorized",
    None,
    "Text->video as text->image then image->video (default: config.sample.factorized).",
)
_EXPAND = flags.DEFINE_bool(
    "expand_prompt", None, "Expand prompts to the caption style (default: config.sample)."
)
_PROMPT_LM = flags.DEFINE_string(
    "prompt_lm", None, "Local LM folder for --expand_prompt (default: config.sample.prompt_lm)."
)
_MESH = flags.DEFINE_string(
    "mesh",
    None,
    "Device mesh: '' one device, 'config' config.mesh, or sizes 'data:2,sequence:4' "
    "(default: config.sample.mesh).",
)
_SHARD_TILES = flags.DEFINE_bool(
    "shard_tiles",
    None,
    "Decode tiled with the tile rows over the mesh's devices (default: config.vae.inference).",
)
_TILE = flags.DEFINE_list(
    "tiles",
    None,
    "size,overlap: decode tiles in latent pixels (default: config.vae.inference), e.g. 16,4.",
)
_CONTEXT = flags.DEFINE_list(
    "context_frames", None, "Given frames: N (--extend) or Na,Nb (--connect); default: auto."
)


def _mode_inputs(config, argv_rest: list[str], num_frames: int) -> dict:
    """`generate` keywords of the chosen mode, from the flags (files read here)."""
    connect = list(_CONNECT.value or [])
    if len(connect) == 1 and len(argv_rest) == 1:  # `--connect a.mp4 b.mp4`
        connect.append(argv_rest.pop())
    if argv_rest:
        raise app.UsageError(f"unexpected arguments: {argv_rest}")
    chosen = [
        name
        for name, on in (
            ("--image", _IMAGE.value),
            ("--extend", _EXTEND.value),
            ("--connect", connect),
            ("--edit", _EDIT.value is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise app.UsageError(f"choose one mode, got {' and '.join(chosen)}")
    if (_EXTEND.value or _EDIT.value is not None) and not _VIDEO.value:
        raise app.UsageError(f"{chosen[0]} needs --video")
    if _VIDEO.value and not (_EXTEND.value or _EDIT.value is not None):
        raise app.UsageError("--video needs --extend forward|backward or --edit STRENGTH")
    if connect and len(connect) != 2:
        raise app.UsageError(f"--connect needs two videos a.mp4 b.mp4, got {connect}")
    try:
        context = tuple(int(v) for v in _CONTEXT.value) if _CONTEXT.value else None
    except ValueError:
        raise app.UsageError(f"--context_frames must be integers, got {_CONTEXT.value}") from None
    if context is not None and len(context) != (2 if connect else 1):
        raise app.UsageError("--context_frames: one number for --extend, two (a,b) for --connect")
    if _IMAGE.value:
        return {"start_frames": video_io.read_frames(_IMAGE.value)[:1]}
    if _EXTEND.value:
        video = video_io.read_frames(_VIDEO.value)
        k = context[0] if context else None
        return pipeline_lib.extend_inputs(config, video, _EXTEND.value, num_frames, k)
    if connect:
        a, b = (video_io.read_frames(p) for p in connect)
        return pipeline_lib.connect_inputs(config, a, b, num_frames, context)
    if _EDIT.value is not None:
        return {"edit_video": video_io.read_frames(_VIDEO.value), "edit_strength": _EDIT.value}
    return {}


def _check_counts(config, mode: dict, num_frames: int) -> None:
    count = lambda key: len(mode[key]) if key in mode else 0  # noqa: E731
    if count("start_frames") or count("end_frames"):
        pipeline_lib.given_latent_frames(
            config, num_frames, count("start_frames"), count("end_frames")
        )


def main(argv):
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required: the folder `python -m sora_jax.train` wrote")
    if not os.path.isdir(_WORKDIR.value):
        raise app.UsageError(f"--workdir={_WORKDIR.value} does not exist")
    prompts = _PROMPT.value or []
    if not prompts or any(not p.strip() for p in prompts):
        raise app.UsageError("--prompt must be given and not empty")
    if wan_pipeline.is_wan_folder(_WORKDIR.value):
        if _ADAPTERS.value:
            raise app.UsageError(
                "--adapters applies to sora_jax models, not a diffusers Wan folder"
            )
        for p in _sample_wan(prompts, list(argv[1:])):
            print(p)
        return
    interval = _INTERVAL.value
    if interval is not None:
        try:
            interval = tuple(float(v) for v in interval)
        except ValueError:
            interval = None
        if interval is None or len(interval) != 2:
            raise app.UsageError("--guidance_interval must be two numbers: t_lo,t_hi")
    try:
        # Inputs first: a bad file or frame count fails before the checkpoints load.
        config = config_lib.load_saved(_WORKDIR.value)
        s = config.sample
        given = lambda flag, default: default if flag.value is None else flag.value  # noqa: E731
        num_frames = given(_FRAMES, s.num_frames)
        height, width = given(_HEIGHT, s.height), given(_WIDTH, s.width)
        grid = geometry.latent_grid(
            config, pipeline_lib.generated_frames(config, num_frames), height, width
        )
        mesh = mesh_lib.inference_mesh(config, given(_MESH, s.mesh))
        decode = _decode_overrides()
        _check_decode(config, decode, mesh, grid)
        _check_sampling_flags(config, interval)
        mode = _mode_inputs(config, list(argv[1:]), num_frames)
        _check_counts(config, mode, num_frames)
        expansions = _expand(config, prompts, num_frames)
        if expansions:
            prompts = [e.expanded for e in expansions]
        pipe = pipeline_lib.load_pipeline(_WORKDIR.value, mesh, _ADAPTERS.value).with_vae_inference(
            **decode
        )
        paths = samples.write_samples(
            pipe,
            prompts,
            _OUT.value or os.path.join(_WORKDIR.value, "cli_samples"),
            num_frames=num_frames,
            height=height,
            width=width,
            seed=_SEED.value,
            negative_prompt=_NEGATIVE.value,
            sampler=_SAMPLER.value,
            steps=_STEPS.value,
            spacing=_SPACING.value,
            time_shift=_SHIFT.value,
            eta=_ETA.value,
            guidance_scale=_GUIDANCE.value,
            guidance_interval=interval,
            guidance_rescale=_RESCALE.value,
            condition_noise=_COND_NOISE.value,
            factorized=_FACTORIZED.value,
            expand_prompt=False,  # expanded above, so SAMPLE.json can record it
            progress=True,
            **mode,
        )
    except (OSError, ValueError, ImportError) as e:  # OSError: also a missing --prompt_lm
        raise app.UsageError(str(e)) from None
    for i, e in enumerate(expansions or ()):
        # write_samples gives an .mp4 and a .gif per prompt, in prompt order.
        log = os.path.splitext(paths[2 * i])[0] + ".json"
        record = {}
        if os.path.exists(log):  # the prompt's warnings (samples.write_samples)
            with open(log) as f:
                record = json.load(f)
        record.update(prompt=e.prompt, expanded_prompt=e.expanded, expansion=e.to_json())
        with open(log, "w") as f:
            json.dump(record, f)
        paths.append(log)
    for p in paths:
        print(p)


WAN_FPS = 16  # the frame rate Wan models are trained at


def _sample_wan(prompts: list[str], positional: list[str]) -> list[str]:
    """Text->video with a diffusers Wan folder; the paths of the mp4s written."""
    unsupported = [
        name
        for name, flag in (
            ("--image", _IMAGE),
            ("--video", _VIDEO),
            ("--connect", _CONNECT),
            ("--edit", _EDIT),
            ("--eta", _ETA),
        )
        if flag.value is not None
    ]
    if unsupported or positional:
        raise app.UsageError(
            f"{' '.join(unsupported + positional)}: a Wan folder samples text->video only"
        )
    value = lambda flag, default: default if flag.value is None else flag.value  # noqa: E731
    try:
        pipe = wan_pipeline.load_folder(_WORKDIR.value)
        videos = pipe.generate(
            prompts,
            negative_prompts=[_NEGATIVE.value] * len(prompts),
            num_frames=value(_FRAMES, 81),
            height=value(_HEIGHT, 480),
            width=value(_WIDTH, 832),
            steps=value(_STEPS, 50),
            guidance_scale=value(_GUIDANCE, 5.0),
            sampler=_SAMPLER.value,
            shift=_SHIFT.value,
            seed=_SEED.value,
        )
        out = _OUT.value or os.path.join(_WORKDIR.value, "cli_samples")
        os.makedirs(out, exist_ok=True)
        paths = []
        for i, (prompt, video) in enumerate(zip(prompts, videos)):
            path = os.path.join(out, f"wan_{i:03d}_seed{_SEED.value}.mp4")
            frames = (video * 255.0 + 0.5).astype("uint8")
            video_io.write_video(path, frames, fps=WAN_FPS, metadata={"comment": prompt})
            paths.append(path)
    except (OSError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    return paths


# Sampling flags -> the config.diffusion keys they override (checked by the same rules).
_SAMPLING_KEYS = (
    ("--steps", _STEPS, "sample_steps"),
    ("--time_shift", _SHIFT, "time_shift"),
    ("--eta", _ETA, "ddim_eta"),
    ("--guidance_scale", _GUIDANCE, "guidance_scale"),
    ("--guidance_rescale", _RESCALE, "guidance_rescale"),
    ("--condition_noise", _COND_NOISE, "condition_noise"),
)


def _check_sampling_flags(config, interval) -> None:
    """The sampling flags' values, checked as config.diffusion's before anything loads; an
    error names the flag (e.g. `--steps=0: must be > 0`)."""
    c = config.copy_and_resolve_references()
    for _, holder, key in _SAMPLING_KEYS:
        if holder.value is not None:
            c.diffusion[key] = type(c.diffusion[key])(holder.value)
    if interval is not None:
        c.diffusion.guidance_interval = interval
    try:
        objectives.validate_config(c)
    except ValueError as e:
        message = str(e)
        for flag, _, key in _SAMPLING_KEYS + (("--guidance_interval", None, "guidance_interval"),):
            message = message.replace(f"config.diffusion.{key}=", f"{flag}=")
        raise app.UsageError(message) from None
    if _EDIT.value is not None and not 0.0 <= _EDIT.value <= 1.0:
        raise app.UsageError(f"--edit={_EDIT.value}: the SDEdit strength must be in [0, 1]")


def _decode_overrides() -> dict:
    """config.vae.inference keys the decode flags set (None: the config's)."""
    tiles = _TILE.value
    if tiles is not None:
        if len(tiles) != 2 or not all(v.strip().isdigit() for v in tiles):
            raise app.UsageError(f"--tiles must be two integers size,overlap, got {tiles}")
        tiles = [int(v) for v in tiles]
    shard = _SHARD_TILES.value
    return {
        "tiled": True if shard or tiles else None,
        "shard_tiles": shard,
        "tile_latent_size": tiles[0] if tiles else None,
        "tile_latent_overlap": tiles[1] if tiles else None,
    }


def _check_decode(config, overrides: dict, mesh, grid) -> None:
    """A sharded decode's tiles split over the mesh (checked before any sampling)."""
    c = config.copy_and_resolve_references()
    c.vae.inference.update({k: v for k, v in overrides.items() if v is not None})
    cfg = vae_inference.from_config(config_lib.validate(c))
    if cfg.shard_tiles and mesh is not None:
        _, h, w = grid
        r_s = geometry.vae_compression(config)[1]
        vae_inference.tile_plan(h, w, cfg.tile_latent_size, cfg.tile_latent_overlap, r_s, mesh.size)


def _expand(config, prompts: list[str], num_frames: int) -> list | None:
    """Expansions of the prompts (None when expansion is off)."""
    return prompts_lib.expand_prompts(
        config, prompts, _SEED.value, num_frames, _EXPAND.value, _PROMPT_LM.value
    )


if __name__ == "__main__":
    cli.run(main)
