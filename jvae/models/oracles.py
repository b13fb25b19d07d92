"""Exact oracles: a linear-Gaussian VAE whose log p(x), p(z|x) and ELBO are closed-form.

The model is z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D). Then p(x) = N(b, W Wᵀ + s² I), and
p(z|x) = N(Σ Wᵀ(x − b)/s², Σ) with Σ = (I + WᵀW/s²)⁻¹. For a factorized q = N(m, diag v),
ELBO = log N(x; W m + b, s² I) − tr(W diag(v) Wᵀ)/(2 s²) − KL(q ‖ N(0, I)) exactly.

Used by the test suite and tutorials to check estimators on value and gradient.
"""

from __future__ import annotations

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.models.vae import VAE
from jvae.bounds.numerics import gaussian_kl
from jvae.distributions.posteriors import FullCovarianceGaussian

Array = jax.Array


class LinearGaussianDecoder(nn.Module):
  """p(x|z) = N(W z + b, s² I); params ``W`` (D, d) and ``b`` (D,), ``s`` fixed."""

  data_dim: int
  latent_dim: int
  noise_scale: float = 1.0

  @nn.compact
  def __call__(self, z: Array):
    w = self.param("W", nn.initializers.normal(1.0), (self.data_dim, self.latent_dim))
    b = self.param("b", nn.initializers.normal(1.0), (self.data_dim,))
    loc = jnp.einsum("ij,...j->...i", w, z) + b
    return distrax.Independent(distrax.Normal(loc, self.noise_scale), 1)

  @property
  def event_shape(self):
    return (self.data_dim,)


class LinearGaussianEncoder(nn.Module):
  """q(z|x) = N(A x + c, diag σ²) (factorized) or N(A x + c, L Lᵀ) (``full_cov``).

  Params: ``A`` (d, D), ``c`` (d,), ``log_scale`` (d,) and, with ``full_cov``, ``lower`` (d, d)
  (strict lower triangle used). :func:`exact_posterior_params` sets them to p(z|x).
  """

  data_dim: int
  latent_dim: int
  full_cov: bool = False

  @nn.compact
  def __call__(self, x: Array):
    d = self.latent_dim
    a = self.param("A", nn.initializers.normal(0.3), (d, self.data_dim))
    c = self.param("c", nn.initializers.zeros, (d,))
    log_scale = self.param("log_scale", nn.initializers.constant(-0.5), (d,))
    loc = x @ a.T + c
    scale = jnp.broadcast_to(jnp.exp(log_scale), loc.shape)
    if not self.full_cov:
      return distrax.MultivariateNormalDiag(loc, scale)
    lower = self.param("lower", nn.initializers.zeros, (d, d))
    return FullCovarianceGaussian(loc, scale, jnp.broadcast_to(lower, (*loc.shape, d)))



def linear_gaussian_vae(data_dim: int, latent_dim: int, *, noise_scale: float = 1.0,
                        full_cov: bool = False) -> VAE:
  """The linear-Gaussian VAE (see module docstring)."""
  return VAE(LinearGaussianEncoder(data_dim, latent_dim, full_cov),
             LinearGaussianDecoder(data_dim, latent_dim, noise_scale),
             prior=distrax.MultivariateNormalDiag(jnp.zeros(latent_dim), jnp.ones(latent_dim)))


def _decoder(params):
  p = params["params"]["decoder"]
  return p["W"], p["b"]


def log_marginal(model: VAE, params, x: Array) -> Array:
  """Exact log p(x) = log N(x; b, W Wᵀ + s² I); x ``(batch, D)`` → ``(batch,)``."""
  w, b = _decoder(params)
  s2 = model.decoder.noise_scale ** 2
  cov = w @ w.T + s2 * jnp.eye(w.shape[0])
  return distrax.MultivariateNormalFullCovariance(b, cov).log_prob(x)


def posterior(model: VAE, params, x: Array):
  """Exact p(z|x): returns (mean ``(batch, d)``, covariance ``(d, d)``)."""
  w, b = _decoder(params)
  s2 = model.decoder.noise_scale ** 2
  cov = jnp.linalg.inv(jnp.eye(w.shape[1]) + w.T @ w / s2)
  mean = (x - b) @ (cov @ w.T / s2).T
  return mean, cov


def exact_posterior_params(model: VAE, params):
  """Encoder params for which q(z|x) = p(z|x) exactly (requires a ``full_cov`` encoder, unless
  WᵀW is diagonal)."""
  w, b = _decoder(params)
  s2 = model.decoder.noise_scale ** 2
  cov = jnp.linalg.inv(jnp.eye(w.shape[1]) + w.T @ w / s2)
  gain = cov @ w.T / s2                         # (d, D)
  chol = jnp.linalg.cholesky(cov)
  enc = dict(params["params"]["encoder"])
  enc["A"] = gain
  enc["c"] = -gain @ b
  enc["log_scale"] = jnp.log(jnp.diag(chol))
  if "lower" in enc:
    enc["lower"] = chol
  elif not jnp.allclose(cov, jnp.diag(jnp.diag(cov)), atol=1e-6):
    raise ValueError("p(z|x) has correlations: use linear_gaussian_vae(..., full_cov=True)")
  return {"params": {**params["params"], "encoder": enc}}


def elbo(model: VAE, params, x: Array) -> Array:
  """Exact ELBO of a factorized encoder; differentiable closed form, ``(batch,)``."""
  w, b = _decoder(params)
  enc = params["params"]["encoder"]
  s = model.decoder.noise_scale
  m = x @ enc["A"].T + enc["c"]
  v = jnp.exp(2 * enc["log_scale"])
  resid = x - (m @ w.T + b)
  dim = x.shape[-1]
  log_lik = (-0.5 * jnp.sum(resid ** 2, -1) / s ** 2 - dim * math.log(s)
             - 0.5 * dim * math.log(2 * math.pi) - 0.5 * jnp.sum(w ** 2 * v, -1).sum() / s ** 2)
  kl = jnp.sum(gaussian_kl(m, jnp.broadcast_to(enc["log_scale"], m.shape), 0.0, 0.0), -1)
  return log_lik - kl
