"""The sampling program over packed rows: settings, per-video inputs, the jitted sampler.

Videos of any sizes are packed into rows (`packing.Packer`, the packer training uses) with
segment ids and positions; each segment slot carries its own prompt and negative prompt, its
own time grid (one per token when the videos' grids differ) and its own given frames. The
sampler sees one array of tokens, and `run` unpacks each video's tokens again, so a video
sampled in a shared row equals the video sampled alone.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sora_jax import config as config_lib
from sora_jax.data import packing
from sora_jax.diffusion import guidance, objectives, samplers
from sora_jax.logging import progress as progress_lib
from sora_jax.parallel import partitioning
from sora_jax.parallel.axes import BATCH, LENGTH


# Sampling options of `Pipeline.generate` -> their config.diffusion keys.
SAMPLING_OPTIONS = {
    "sampler": "sampler",
    "steps": "sample_steps",
    "spacing": "spacing",
    "time_shift": "time_shift",
    "eta": "ddim_eta",
    "guidance_scale": "guidance_scale",
    "guidance_interval": "guidance_interval",
    "guidance_rescale": "guidance_rescale",
    "condition_noise": "condition_noise",
}


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Everything that fixes the sampling program (hashable: a static jit argument)."""

    objective: objectives.RectifiedFlow | objectives.DDPM
    sampler: str
    steps: int
    spacing: str
    eta: float
    karras: tuple[float, float, float]  # (rho, sigma_min, sigma_max)
    guidance_scale: float
    guidance_interval: tuple[float, float]
    guidance_rescale: float
    condition_noise: float = 0.0  # time of the given frames (noise augmentation; 0: clean)
    t_start: float = 1.0  # < 1: start from a noised input at this time (SDEdit)

    @classmethod
    def from_config(cls, config, **overrides) -> SamplerSettings:
        """config.diffusion with `overrides` (SAMPLING_OPTIONS names; None keeps the config's),
        validated like the config: a bad value names its config key."""
        unknown = set(overrides) - set(SAMPLING_OPTIONS)
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}")
        c = config.copy_and_resolve_references()
        for name, value in overrides.items():
            if value is not None:
                key = SAMPLING_OPTIONS[name]
                c.diffusion[key] = tuple(value) if key == "guidance_interval" else value
        f = config_lib.validate(c).diffusion
        return cls(
            objective=objectives.from_config(c),
            sampler=f.sampler,
            steps=int(f.sample_steps),
            spacing=f.spacing,
            eta=float(f.ddim_eta),
            karras=(float(f.karras_rho), float(f.karras_sigma_min), float(f.karras_sigma_max)),
            guidance_scale=float(f.guidance_scale),
            guidance_interval=tuple(float(v) for v in f.guidance_interval),
            guidance_rescale=float(f.guidance_rescale),
            condition_noise=float(f.condition_noise),
        )

    def time_grid(self, num_tokens: int) -> jax.Array:
        """f32[steps + 1] from 1 (or t_start) to 0 for a video of `num_tokens` latent tokens."""
        rho, sigma_min, sigma_max = self.karras
        shift = self.objective.time.shift(num_tokens)
        return samplers.time_grid(
            self.objective, self.steps, self.spacing, shift, rho, sigma_min, sigma_max, self.t_start
        )


@dataclasses.dataclass
class Video:
    """One video of a sampling call in its own token layout (rows of `packing.patchify`)."""

    grid: tuple[int, int, int]  # latent frames, height, width
    noise: np.ndarray  # f32[l d]
    prompt: int  # its row of the call's text embeddings
    negative: int  # its negative prompt's row
    cond: tuple[np.ndarray, np.ndarray] | None = None  # given tokens f32[l d], mask bool[l]
    cond_eps: np.ndarray | None = None  # f32[l d]: noise of the given tokens
    edit: np.ndarray | None = None  # f32[l d]: tokens of the video to edit


def packed_inputs(settings, packed, videos, emb, mask) -> dict:
    """`_sample_tokens` keywords of one packed batch of `videos` (and the time grid the
    progress line follows, 'progress_grid')."""
    seg = packed.batch["segment_ids"]
    b, length = seg.shape
    slots = max(p.segment for p in packed.placements)
    placed = [(videos[k], p) for k, p in zip(packed.keys, packed.placements)]
    emb, mask = np.asarray(emb), np.asarray(mask)
    text = np.zeros((2, b, slots) + emb.shape[1:], emb.dtype)
    text_mask = np.zeros((2, b, slots) + mask.shape[1:], bool)
    for v, p in placed:
        for half, row in enumerate((v.prompt, v.negative)):
            text[half, p.row, p.segment - 1] = emb[row]
            text_mask[half, p.row, p.segment - 1] = mask[row]
    grids = [np.asarray(settings.time_grid(len(v.noise))) for v, _ in placed]
    times = None
    if any(not np.array_equal(g, grids[0]) for g in grids):
        # Each token on its video's grid; padding on the first one's (it ends in 0 last too).
        times = np.broadcast_to(grids[0][:, None, None, None], (len(grids[0]), b, length, 1))
        times = times.copy()
        for g, (_, p) in zip(grids, placed):
            times[:, p.row, p.start : p.start + p.length, 0] = g[:, None]
    out = dict(
        noise=packed.batch["tokens"],
        segment_ids=seg,
        positions=packed.batch["positions"],
        text=text.reshape((2 * b,) + text.shape[2:]),
        text_mask=text_mask.reshape((2 * b,) + text_mask.shape[2:]),
        num_tokens=len(placed[0][0].noise) if times is None else None,
        times=times,
        cond_tokens=None,
        cond_mask=None,
        cond_eps=None,
        edit=None,
        progress_grid=grids[0],
    )
    fields = {"cond_tokens": "cond", "cond_eps": "cond_eps", "edit": "edit"}
    for name, attr in fields.items():
        if any(getattr(v, attr) is not None for v, _ in placed):
            out[name] = np.zeros_like(packed.batch["tokens"])
    if out["cond_tokens"] is not None:
        out["cond_mask"] = np.zeros((b, length), bool)
    for v, p in placed:
        span = (p.row, slice(p.start, p.start + p.length))
        if v.cond is not None:
            out["cond_tokens"][span], out["cond_mask"][span] = v.cond
        if v.cond_eps is not None:
            out["cond_eps"][span] = v.cond_eps
        if v.edit is not None:
            out["edit"][span] = v.edit
    if settings.condition_noise <= 0:
        out["cond_eps"] = None
    return out


# Logical axes of the sampler inputs (`sample_tokens` keywords); None: never split.
INPUT_AXES = {
    "noise": (BATCH, LENGTH, None),
    "segment_ids": (BATCH, LENGTH),
    "positions": (BATCH, LENGTH, None),
    "text": (BATCH, None, None, None),
    "text_mask": (BATCH, None, None),
    "times": (None, BATCH, LENGTH, None),
    "cond_tokens": (BATCH, LENGTH, None),
    "cond_mask": (BATCH, LENGTH),
    "cond_eps": (BATCH, LENGTH, None),
    "edit": (BATCH, LENGTH, None),
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """A device mesh and the logical axis rules sampling runs under (hashable: static)."""

    mesh: Mesh
    rules: partitioning.Rules

    @classmethod
    def from_config(cls, config, mesh: Mesh | None) -> Layout | None:
        """config.mesh.rules on `mesh` (None: no mesh, one device)."""
        if mesh is None:
            return None
        return cls(mesh, partitioning.rules_from_config(config.mesh.rules))

    def split(self, name: str) -> int:
        """How many ways the rules split the logical axis `name` on this mesh."""
        axes = nn.logical_to_mesh_axes((name,), self.rules)[0]
        axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
        return int(np.prod([self.mesh.shape[a] for a in axes]))

    def sharding(self, shape, names) -> NamedSharding:
        """The rules' sharding of an array of `shape` with logical axes `names`, a dimension
        left unsplit where its mesh axes do not divide it (a batch of one row, say)."""
        spec = nn.logical_to_mesh_axes(names, self.rules)
        fit = [
            a if a is None or n % self.split(name) == 0 else None
            for a, n, name in zip(spec, shape, names)
        ]
        return NamedSharding(self.mesh, P(*fit))


def pad_inputs(args: dict, rows: int, length: int) -> dict:
    """`packed_inputs` keywords with `rows` rows and `length` tokens per row (empty rows and
    padding tokens: segment id 0, zero text with a False mask, the last time of each row)."""
    out = dict(args)
    for name, axes in INPUT_AXES.items():
        x = args.get(name)
        if x is None:
            continue
        x = np.asarray(x)
        r, l = axes.index(BATCH), axes.index(LENGTH) if LENGTH in axes else None
        if name in ("text", "text_mask"):  # conditional rows, then unconditional ones
            halves = np.split(x, 2, axis=r)
            pad = [(0, 0)] * x.ndim
            pad[r] = (0, rows - halves[0].shape[r])
            out[name] = np.concatenate([np.pad(h, pad) for h in halves], axis=r)
            continue
        pad = [(0, 0)] * x.ndim
        pad[r] = (0, rows - x.shape[r])
        if l is not None:
            pad[l] = (0, length - x.shape[l])
        out[name] = np.pad(x, pad, mode="edge" if name == "times" else "constant")
    return out


def place_inputs(args: dict, layout: Layout) -> tuple[dict, tuple[int, int]]:
    """(`args` padded to what `layout` divides and placed on its mesh, their (rows, length)
    before padding). The 2b model rows (conditional, unconditional) must split over the batch
    axes, and the rows' length over the length axis."""
    b, l = args["segment_ids"].shape
    split_b, split_l = layout.split(BATCH), layout.split(LENGTH)
    rows = b
    while (2 * rows) % split_b:
        rows += 1
    length = -(-l // split_l) * split_l
    padded = pad_inputs(args, rows, length)
    for name, axes in INPUT_AXES.items():
        x = padded.get(name)
        if x is not None:
            sharding = layout.sharding(x.shape, axes)
            padded[name] = jax.make_array_from_callback(x.shape, sharding, lambda i, x=x: x[i])
    return padded, (b, l)


# The progress of the sampling call running now; the jitted sampler loop reports each model
# call's time to it (a module global: the callback must be static).
_progress: progress_lib.SamplerProgress | None = None


def _report_time(time):
    if _progress is not None:
        _progress.report(time)


def segment_values(x: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """f32[b s]: the value x f32[b l] holds on each segment's tokens (0 for empty slots)."""
    onehot = segment_ids[..., None] == jnp.arange(1, num_segments + 1)
    value = jnp.max(jnp.where(onehot, x[..., None], -jnp.inf), axis=1)
    return jnp.where(jnp.any(onehot, axis=1), value, 0.0)


def sample_tokens(dit, settings: SamplerSettings, params, key, *, layout=None, **inputs):
    """`_sample_tokens` (below), traced under `layout`'s mesh and rules when one is given
    (the inputs placed by `place_inputs`, the params by the rules)."""
    if layout is None:
        return _sample_tokens(dit, settings, params, key, **inputs)
    with partitioning.activate(layout.mesh, layout.rules):
        return _sample_tokens(dit, settings, params, key, layout=layout, **inputs)


@functools.partial(jax.jit, static_argnames=("dit", "settings", "num_tokens", "report", "layout"))
def _sample_tokens(
    dit,
    settings: SamplerSettings,
    params,
    key,
    *,
    noise,
    segment_ids,
    positions,
    text,
    text_mask,
    num_tokens,
    times,
    cond_tokens,
    cond_mask,
    cond_eps,
    edit,
    report=False,
    layout=None,
):
    """Sampled latent tokens f32[b l d] (normalised) of packed rows; params are traced.

    `noise` f32[b l d], `segment_ids` i32[b l], `positions` i32[b l 3]: the packed rows.
    `text` f32[2b s lt dim], `text_mask` bool[2b s lt]: each segment slot's prompt embedding,
    then (rows b..2b) its negative (unconditional) one. Times: every video on the time grid
    of `num_tokens` tokens (a static int), or, with `times` f32[k b l 1], each token on its
    video's grid. `cond_tokens` f32[b l d] / `cond_mask` bool[b l] (or None): the clean tokens
    of given frames, noised with `cond_eps` f32[b l d] to settings.condition_noise when that
    is > 0; `edit` f32[b l d] (or None): tokens to noise to settings.t_start (SDEdit). `report`
    sends each model call's time to the host (`_report_time`, for the progress line).
    `layout` (static) is the mesh and rules the call is traced under: part of the jit cache
    key, since flax's logical rules are not.
    """
    b, num_slots = text.shape[0] // 2, text.shape[1]
    seg = jnp.concatenate([segment_ids, segment_ids])
    pos = jnp.concatenate([positions, positions])
    tc = settings.condition_noise
    given = cond_tokens
    if cond_tokens is not None and tc > 0:
        # Given tokens at their own fixed time tc (noise augmentation; clean at tc = 0).
        given = settings.objective.corrupt(cond_tokens, cond_eps, jnp.float32(tc))

    def impose(x, tokens):
        """Given frames' `tokens` in place of the sampler's state."""
        return x if cond_tokens is None else jnp.where(cond_mask[..., None], tokens, x)

    def model_fn(x, time):
        """Guided model output f32[b l d] at x f32[b l d], time f32[] or f32[b l 1]."""
        if time.ndim == 0:
            t_seg = jnp.full((2 * b, num_slots), time)
        else:
            t_seg = jnp.tile(segment_values(time[..., 0], segment_ids, num_slots), (2, 1))
        kw = {}
        if cond_tokens is not None:
            # The unconditional rows see the given tokens too: CFG only guides the text.
            kw = dict(
                cond_mask=jnp.tile(cond_mask, (2, 1)),
                t_given=jnp.full((2 * b, num_slots), tc, jnp.float32),
            )
        if report:
            jax.debug.callback(_report_time, time if time.ndim == 0 else time[0, 0, 0])
        x = impose(x, given)
        out = dit.apply(
            {"params": params["dit"]},
            jnp.concatenate([x, x]),
            t_seg,
            seg,
            pos,
            text,
            text_mask,
            **kw,
        )
        return guidance.guide(
            out[:b],
            out[b:],
            time,
            settings.guidance_scale,
            settings.guidance_interval,
            settings.guidance_rescale,
            # Per segment in shared rows, and on a mesh, whose rows may hold padding tokens.
            segment_ids=segment_ids if num_slots > 1 or layout is not None else None,
            num_segments=num_slots,
        )

    x = noise
    if edit is not None:
        x = samplers.start_state(settings.objective, edit, noise, settings.t_start)
    x = samplers.sample(
        settings.sampler,
        model_fn,
        settings.objective,
        x,
        settings.time_grid(num_tokens) if times is None else times,
        eta=settings.eta,
        rng=jax.random.fold_in(key, 1),
    )
    return impose(x, cond_tokens)


def run(dit, params, videos, positions, text, settings, key, packer, progress=False, layout=None):
    """Sampled normalised latent tokens f32[l_i d] of each `Video` (its patch positions
    `positions[i]` i32[l_i 3]; `text` = (f32[m lt dim], bool[m lt]) embeddings its indices
    point into): packed into the rows of `packer`, one sampler call per packed batch,
    unpacked again. `progress` prints a progress line with ETA per call. With a `layout`
    each call runs sharded over its mesh (params placed by its rules already)."""
    emb, mask = text
    added = [packer.add(i, v.noise, pos) for i, (v, pos) in enumerate(zip(videos, positions))]
    out: list[np.ndarray | None] = [None] * len(videos)
    global _progress
    for packed in [p for p in added if p is not None] + packer.flush():
        args = packed_inputs(settings, packed, videos, emb, mask)
        grid = args.pop("progress_grid")
        b, l = args["segment_ids"].shape
        if layout is not None:
            args, (b, l) = place_inputs(args, layout)
            args["layout"] = layout
        if progress:
            _progress = progress_lib.SamplerProgress(grid)
        try:
            tokens = sample_tokens(dit, settings, params, key, report=progress, **args)
            tokens = np.asarray(jax.block_until_ready(tokens))[:b, :l]
            if progress:
                _progress.finish()
        finally:
            _progress = None
        for i, tok in zip(packed.keys, packing.unpack(tokens, packed.placements)):
            out[i] = tok
    return out
