"""Reconstruction metrics: PSNR and SSIM (Gaussian window), in jax.numpy.

Images are ``f32[... h w c]`` with values in ``[0, data_range]``; every metric returns one value
per image (``f32[...]``), averaged over pixels and channels, so per-frame figures of videos
``f32[n t h w c]`` come out as ``f32[n t]``.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): local means, variances and covariance under an 11x11 Gaussian window (sigma 1.5,
normalised), computed on valid positions only (no padding), per channel, then averaged;
``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``. Population (biased) local
statistics, as in the paper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["psnr", "mse", "ssim", "gaussian_window"]


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error per image: ``f32[... h w c] x2 -> f32[...]``."""
    _check_pair(x, y)
    return jnp.mean(
        jnp.square(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)), (-3, -2, -1)
    )


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """``10 log10(data_range^2 / MSE)`` per image, in dB (``inf`` for identical images)."""
    return 10.0 * jnp.log10(data_range**2 / mse(x, y))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """``f32[size]``: a normalised 1-D Gaussian (the 2-D window is its outer product)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size {size}: must be a positive odd number")
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _filter(x: jax.Array, g: np.ndarray) -> jax.Array:
    """Separable valid-mode filtering over axes (-3, -2) of ``f32[... h w c]``."""
    k = len(g)
    h, w = x.shape[-3], x.shape[-2]
    x = sum(g[i] * x[..., i : i + h - k + 1, :, :] for i in range(k))
    return sum(g[i] * x[..., :, i : i + w - k + 1, :] for i in range(k))


def ssim(
    x: jax.Array,
    y: jax.Array,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Structural similarity per image: ``f32[... h w c] x2 -> f32[...]`` (1 for x == y)."""
    _check_pair(x, y)
    h, w = x.shape[-3], x.shape[-2]
    if min(h, w) < window:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {window}x{window} window")
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    g = gaussian_window(window, sigma)
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    var_x = _filter(x * x, g) - mu_x**2
    var_y = _filter(y * y, g) - mu_y**2
    cov = _filter(x * y, g) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return jnp.mean(s, axis=(-3, -2, -1))


def _check_pair(x, y) -> None:
    if np.shape(x) != np.shape(y) or np.ndim(x) < 3:
        raise ValueError(
            f"expected two images of the same shape [... h w c], got {np.shape(x)} and {np.shape(y)}"
        )
