"""VAE reconstruction quality on held-out moving-shapes videos: PSNR, SSIM and (given LPIPS
weights) LPIPS, per frame too.

The causal VAE encodes frame 0 alone (an image) and later frames in groups of ``r_t``, so the
first frame's quality is reported apart from the rest. Reconstructions use the posterior mean
and ``config.vae.inference`` (chunked / tiled), padding sizes the VAE cannot take.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from sora_jax import config as config_lib
from sora_jax.data import shapes, video_io
from sora_jax.evaluation import reconstruction as rec
from sora_jax.inference import loader
from sora_jax.models import lpips as lpips_lib
from sora_jax.models import vae_inference
from sora_jax.parallel import mesh as mesh_lib

__all__ = [
    "held_out_videos",
    "reconstruct_videos",
    "metrics",
    "lpips_metrics",
    "write_side_by_side",
    "evaluate_workdir",
]


def held_out_videos(seed: int, n: int, frames: int, height: int, width: int) -> np.ndarray:
    """``uint8[n t h w 3]`` moving-shapes videos of data seed ``seed`` (training uses
    ``config.data.seed``; example i is a pure function of (seed, i))."""
    source = shapes.MovingShapes(
        seed=seed,
        num_examples=n,
        frame_choices=(frames,),
        resolutions=((height, width),),
        image_fraction=1.0 if frames == 1 else 0.0,
    )
    return np.stack([source[i]["video"] for i in range(n)])


@functools.lru_cache(maxsize=8)
def _reconstructor(model, cfg: vae_inference.InferenceConfig):
    return jax.jit(lambda p, x: vae_inference.reconstruct(model, p, x, cfg))


def reconstruct_videos(
    model, params, videos: np.ndarray, cfg: vae_inference.InferenceConfig, batch_size: int = 8
) -> np.ndarray:
    """``uint8[n t h w 3] -> f32[n t h w 3]`` reconstructions in ``[0, 1]`` (clipped)."""
    fn = _reconstructor(model, cfg)  # compiled once per model, setting and shape
    out = []
    for s in range(0, len(videos), batch_size):
        chunk = videos[s : s + batch_size]
        pad = batch_size - len(chunk)  # one compile: the last batch is padded
        x = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        y = np.asarray(fn(params, x.astype(np.float32) / 127.5 - 1.0))[: len(chunk)]
        out.append(np.clip((y + 1.0) / 2.0, 0.0, 1.0))
    return np.concatenate(out)


def metrics(videos: np.ndarray, recon: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of ``recon`` (f32 in [0, 1]) against ``videos`` (uint8), as means
    over videos of per-frame values: overall, first frame, the rest, and per frame index."""
    x = videos.astype(np.float32) / 255.0
    p = np.asarray(rec.psnr(x, recon))  # f32[n t]
    s = np.asarray(rec.ssim(x, recon))
    out = {"num_videos": int(x.shape[0]), "frames": int(x.shape[1])}
    out["size"] = [int(x.shape[2]), int(x.shape[3])]
    for name, v in (("psnr", p), ("ssim", s)):
        out[name] = float(v.mean())
        out[f"{name}_first_frame"] = float(v[:, 0].mean())
        out[f"{name}_rest"] = float(v[:, 1:].mean()) if v.shape[1] > 1 else None
        out[f"{name}_per_frame"] = [float(f) for f in v.mean(axis=0)]
    return out


def lpips_metrics(videos: np.ndarray, recon: np.ndarray, path: str, batch_size: int = 8) -> dict:
    """LPIPS (lower is closer; weights from ``path``, see sora_jax/models/lpips.py) of
    ``recon`` (f32 in [0, 1]) against ``videos`` (uint8): overall, first frame, the rest, per
    frame index, as ``metrics`` does for PSNR and SSIM."""

    fn = jax.jit(lpips_lib.distance_fn(*lpips_lib.load(path)))
    x = videos.astype(np.float32) / 127.5 - 1.0
    y = recon.astype(np.float32) * 2.0 - 1.0
    d = np.concatenate(
        [
            np.asarray(fn(x[s : s + batch_size], y[s : s + batch_size]))
            for s in range(0, len(x), batch_size)
        ]
    )  # f32[n t]
    return {
        "lpips": float(d.mean()),
        "lpips_first_frame": float(d[:, 0].mean()),
        "lpips_rest": float(d[:, 1:].mean()) if d.shape[1] > 1 else None,
        "lpips_per_frame": [float(f) for f in d.mean(axis=0)],
    }


def write_side_by_side(
    out_dir: str, videos: np.ndarray, recon: np.ndarray, fps: int = 8, n: int = 4
) -> list[str]:
    """Writes ``n`` videos as ``[input | reconstruction]`` .mp4 and .gif; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(min(n, len(videos))):
        r = np.round(recon[i] * 255.0).astype(np.uint8)
        both = np.concatenate([videos[i], r], axis=2)  # side by side along width
        for ext in ("mp4", "gif"):
            if ext == "mp4" and (both.shape[1] % 2 or both.shape[2] % 2):
                continue  # yuv420p needs even sizes; the gif is still written
            path = os.path.join(out_dir, f"{i:02d}_input_vs_recon.{ext}")
            meta = {"title": f"held-out video {i}: input (left) vs VAE reconstruction (right)"}
            video_io.write_video(path, both, fps=fps, metadata=meta)
            paths.append(path)
    return paths


def evaluate_workdir(
    workdir: str,
    num_videos: int,
    seed=None,
    frames=None,
    height=None,
    width=None,
    out=None,
    num_write: int = 4,
    batch_size: int = 8,
    lpips_path: str | None = None,
) -> dict:
    """``python -m sora_jax.evaluate_vae`` (see there): the workdir's VAE on held-out videos;
    writes ``metrics.json`` and side-by-side videos to ``out``; returns the metrics dict.
    LPIPS is reported when ``lpips_path`` (default: config.vae.perceptual.path) is set."""
    config = config_lib.load_saved(workdir)
    seed = config.eval.seed if seed is None else seed
    if seed == config.data.seed:
        raise ValueError(
            f"--seed={seed} is the training data seed (config.data.seed): not held out"
        )
    if num_videos < 1:
        raise ValueError(f"--num_videos={num_videos}: must be >= 1")
    s = config.sample
    frames, height, width = frames or s.num_frames, height or s.height, width or s.width
    model, params = loader.load_vae(config, workdir, mesh_lib.create_mesh(1))
    videos = held_out_videos(seed, num_videos, frames, height, width)
    cfg = vae_inference.from_config(config)
    recon = reconstruct_videos(model, params, videos, cfg, batch_size)
    result = {"workdir": workdir, "seed": seed, **metrics(videos, recon)}
    lpips_path = config.vae.perceptual.path if lpips_path is None else lpips_path
    if lpips_path:
        result.update(lpips_metrics(videos, recon, lpips_path, batch_size))
    out = out or os.path.join(workdir, "vae_eval")
    result["videos"] = write_side_by_side(out, videos, recon, fps=config.data.fps, n=num_write)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
