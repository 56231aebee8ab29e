"""Exact denoisers of Gaussian mixtures: ground truth for testing and benchmarking samplers.

For data x0 ~ sum_k pi_k N(mu_k, S_k) and x_t = a x0 + s eps, x_t given component k is
N(a mu_k, C_k) with C_k = a^2 S_k + s^2 I, and (Gaussian conditioning)
  E[x0 | x_t, k] = mu_k + a S_k C_k^-1 (x_t - a mu_k),   E[eps | x_t, k] = s C_k^-1 (x_t - a mu_k),
mixed with the posterior weights w_k(x_t) ~ pi_k N(x_t; a mu_k, C_k). The optimal model
output of any objective is its target evaluated at these (x0, eps): v = eps - x0 for flows,
eps / x0 / alpha eps - sigma x0 for DDPM.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    weights: np.ndarray  # f[k]
    means: np.ndarray  # f[k d]
    covs: np.ndarray  # f[k d d]

    @property
    def mean(self) -> np.ndarray:
        return np.einsum("k,kd->d", self.weights, self.means)

    @property
    def cov(self) -> np.ndarray:
        """Law of total covariance: E[S_k] + Cov[mu_k]."""
        centred = self.means - self.mean
        return np.einsum("k,kde->de", self.weights, self.covs) + np.einsum(
            "k,kd,ke->de", self.weights, centred, centred
        )

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """f64[n d] exact samples."""
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.means.shape[1]))
        return self.means[k] + np.einsum("nde,ne->nd", chol[k], z)

    def posterior(self, x: jax.Array, a: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(E[x0 | x_t], E[eps | x_t]), each f32[n d], for x_t = x f32[n d] at scalars a, s."""
        d = x.shape[-1]
        means = jnp.asarray(self.means, jnp.float32)
        covs = jnp.asarray(self.covs, jnp.float32)
        c = a**2 * covs + s**2 * jnp.eye(d)  # [k d d]
        r = x[:, None, :] - a * means[None]  # [n k d]
        c_inv_r = jnp.einsum("kde,nke->nkd", jnp.linalg.inv(c), r)
        log_n = -0.5 * jnp.einsum("nkd,nkd->nk", r, c_inv_r) - 0.5 * jnp.linalg.slogdet(c)[1]
        w = jax.nn.softmax(jnp.log(jnp.asarray(self.weights, jnp.float32)) + log_n, axis=-1)
        x0_k = means[None] + a * jnp.einsum("kde,nke->nkd", covs, c_inv_r)
        x0 = jnp.einsum("nk,nkd->nd", w, x0_k)
        eps = jnp.einsum("nk,nkd->nd", w, s * c_inv_r)
        return x0, eps

    def model_fn(self, objective):
        """The optimal model of `objective`: `(x f32[n d], t f32[]) -> output f32[n d]`."""

        def fn(x, t):
            a, s = objective.alpha_sigma(t)
            x0, eps = self.posterior(x, a, s)
            return objective.target(x0, eps, t)

        return fn


def two_gaussians(seed: int = 1) -> GaussianMixture:
    """The 4-d, two-component (weights 0.3 / 0.7), anisotropic mixture of the tests and of
    benchmarks/sampler_accuracy.py."""
    b = np.random.default_rng(seed).normal(size=(2, 4, 4)) * 0.3
    covs = np.einsum("kij,klj->kil", b, b) + 0.05 * np.eye(4)
    means = np.array([[2.0, 1.0, 0.0, -1.0], [-1.0, -0.5, 0.5, 1.0]])
    return GaussianMixture(np.array([0.3, 0.7]), means, covs)


def moment_error(samples: np.ndarray, target: GaussianMixture) -> float:
    """|mean - target mean| + |cov - target cov|_F (covariance error dominates when bad)."""
    samples = np.asarray(samples, np.float64)
    return float(
        np.linalg.norm(samples.mean(0) - target.mean)
        + np.linalg.norm(np.cov(samples.T) - target.cov)
    )


def gaussian_w2(samples: np.ndarray, target: GaussianMixture) -> float:
    """2-Wasserstein distance between Gaussians with the samples' and the target's moments."""
    samples = np.asarray(samples, np.float64)
    m, c = samples.mean(0), np.cov(samples.T)
    tm, tc = target.mean, target.cov
    root = _sqrtm(tc)
    cross = _sqrtm(root @ c @ root)
    return float(np.sqrt(max(np.sum((m - tm) ** 2) + np.trace(c + tc - 2 * cross), 0.0)))


def _sqrtm(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T
