"""Exact oracles: a linear-Gaussian VAE whose log p(x), p(z|x) and ELBO are closed-form.

The model is z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D). Then p(x) = N(b, W Wᵀ + s² I), and
p(z|x) = N(Σ Wᵀ(x − b)/s², Σ) with Σ = (I + WᵀW/s²)⁻¹. For a factorized q = N(m, diag v),
ELBO = log N(x; W m + b, s² I) − tr(W diag(v) Wᵀ)/(2 s²) − KL(q ‖ N(0, I)) exactly.

Used by the test suite and tutorials to check estimators on value and gradient.
"""

from __future__ import annotations

import dataclasses
import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.models.contract import Joint, Proposal, data_of
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


def exact_log_marginal(model: VAE, params, x: Array) -> Array:
  """Exact log p(x) = log N(x; b, W Wᵀ + s² I); x ``(batch, D)`` → ``(batch,)``."""
  w, b = _decoder(params)
  s2 = model.decoder.noise_scale ** 2
  cov = w @ w.T + s2 * jnp.eye(w.shape[0])
  return distrax.MultivariateNormalFullCovariance(b, cov).log_prob(x)


def exact_posterior(model: VAE, params, x: Array):
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


def exact_elbo(model: VAE, params, x: Array) -> Array:
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


# ------------------------------------------------------------------------------------------------
# A two-layer linear-Gaussian hierarchy, in a bottom-up and a top-down parameterization of q.

# The names these had first; ``exact_*`` says they are closed forms, not jvae's estimators.
log_marginal = exact_log_marginal
posterior = exact_posterior
elbo = exact_elbo


TWO_LAYER_ORDERS = ("bottom_up", "top_down")
_INPUTS = ("x", "z1", "z2")


@dataclasses.dataclass(frozen=True)
class TwoLayerLinearGaussian:
  r"""z_2 ~ N(0, I), z_1|z_2 ~ N(A z_2 + a, S_1), x|z_1 ~ N(W z_1 + b, s² I): exact in closed form.

  S_1 = diag(exp(2 log_s1)) is diagonal; s is ``noise_scale`` (fixed). Writing v = (z_1, z_2),
  the joint of (v, x) is Gaussian with

  .. math::
     \operatorname{Cov} v = \begin{pmatrix} C_1 & A \\ Aᵀ & I \end{pmatrix},\quad
     C_1 = A Aᵀ + S_1,\quad
     x ~ N(W a + b,\ W C_1 Wᵀ + s² I),\quad \operatorname{Cov}(x, v) = W (C_1\ \ A),

  so log p(x) is closed-form and the exact posterior p(v|x) = N(μ_v + G (x − μ_x),
  Σ_v − G Cov(x, v)), G = Cov(v, x) Cov(x)⁻¹, follows by Gaussian conditioning. q is a contract
  model (``init``/``propose``/``log_joint``, flax-free) with linear-Gaussian, full-covariance
  conditionals in one of two orders:

  * ``"bottom_up"``: q(z_1|x) q(z_2|z_1). Exact, because p(v|x) = p(z_1|x) p(z_2|z_1, x) and
    z_2 ⊥ x | z_1, so p(z_2|z_1, x) = p(z_2|z_1) is linear-Gaussian in z_1 alone.
  * ``"top_down"``: q(z_2|x) q(z_1|z_2, x). Exact as well: both factors of p(v|x) in that order
    are linear-Gaussian in (z_2, x).

  Params: ``{"decoder": {W (D, d_1), b (D,), A (d_1, d_2), a (d_1,), log_s1 (d_1,)},
  "encoder": {"q1": ..., "q2": ...}}``, each conditional q(z_l|·) = N(Σ_u A_u u + c, L Lᵀ) with
  kernels ``Ax``/``Az1``/``Az2`` on its inputs u, ``c``, ``log_scale`` (diag of L) and ``lower``
  (strict lower triangle used). :meth:`exact_posterior_params` sets q to p(z_1, z_2|x);
  :meth:`exact_elbo` is E_q[log w] = log p(x) − KL(q(v|x) ‖ p(v|x)) in closed form.

  Attributes:
    data_dim: D.
    latent_dims: (d_1, d_2).
    noise_scale: s.
    order: ``"bottom_up"`` or ``"top_down"``.
  """

  data_dim: int
  latent_dims: tuple[int, int]
  noise_scale: float = 1.0
  order: str = "bottom_up"

  def __post_init__(self):
    if self.order not in TWO_LAYER_ORDERS:
      raise ValueError(f"unknown order {self.order!r}; expected one of {TWO_LAYER_ORDERS}")
    if len(self.latent_dims) != 2 or min(self.latent_dims) < 1 or self.data_dim < 1:
      raise ValueError(f"need data_dim >= 1 and two latent sizes >= 1, got data_dim="
                       f"{self.data_dim}, latent_dims={self.latent_dims}")

  @property
  def _inputs(self) -> dict[str, tuple[str, ...]]:
    """The inputs of each conditional of q."""
    if self.order == "bottom_up":
      return {"q1": ("x",), "q2": ("z1",)}
    return {"q2": ("x",), "q1": ("x", "z2")}

  @property
  def _first(self) -> str:
    return "q1" if self.order == "bottom_up" else "q2"

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  def init(self, key, batch=None):
    """Random generative params and a mismatched q (``batch`` is only checked)."""
    if batch is not None:
      self._check_x(data_of(batch))
    dim, (d1, d2) = self.data_dim, self.latent_dims
    sizes = {"x": dim, "z1": d1, "z2": d2}
    k = iter(jax.random.split(key, 16))
    normal = lambda shape, scale: scale * jax.random.normal(next(k), shape)
    decoder = {"W": normal((dim, d1), 0.8), "b": normal((dim,), 1.0),
               "A": normal((d1, d2), 0.8), "a": normal((d1,), 0.5),
               "log_s1": math.log(0.6) + normal((d1,), 0.2)}
    encoder = {}
    for name, inputs in self._inputs.items():
      d = d1 if name == "q1" else d2
      encoder[name] = {**{f"A{u}": normal((d, sizes[u]), 0.3) for u in inputs},
                       "c": jnp.zeros((d,)), "log_scale": jnp.full((d,), -0.5),
                       "lower": normal((d, d), 0.1)}
    return {"decoder": decoder, "encoder": encoder}

  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """(z_1, z_2) ~ q ancestrally in ``order``, each ``(K, batch, d_l)``; groups ``(K, batch, 2)``.

    With ``density_params`` both log q factors are evaluated there on the same samples.
    """
    x = self._check_x(data_of(batch))
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
      raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    first = self._first
    second = "q2" if first == "q1" else "q1"
    k1, k2 = jax.random.split(key)
    enc = params["encoder"]
    za, lqa = self._draw(enc, first, {"x": x}, k1, num_samples)
    inputs = {"x": x, _latent(first): za}
    zb, lqb = self._draw(enc, second, inputs, k2, None)
    if density_params is not None:
      enc_d = density_params["encoder"]
      lqa = self._log_prob(enc_d, first, {"x": x}, za)
      lqb = self._log_prob(enc_d, second, inputs, zb)
    z = (za, zb) if first == "q1" else (zb, za)
    groups = jnp.stack([lqa, lqb] if first == "q1" else [lqb, lqa], axis=-1)
    return Proposal(z, jnp.sum(groups, -1), groups)

  def log_joint(self, params, batch, z) -> Joint:
    """log N(x; W z_1 + b, s² I) and log N(z_1; A z_2 + a, S_1) + log N(z_2; 0, I)."""
    x = self._check_x(data_of(batch))
    z1, z2 = z
    dec = params["decoder"]
    log_lik = _diag_normal_log_prob(x, z1 @ dec["W"].T + dec["b"],
                                    jnp.full((self.data_dim,), math.log(self.noise_scale)))
    groups = jnp.stack([_diag_normal_log_prob(z1, z2 @ dec["A"].T + dec["a"], dec["log_s1"]),
                        _diag_normal_log_prob(z2, 0.0, jnp.zeros_like(z2))], axis=-1)
    return Joint(log_lik, jnp.sum(groups, -1), groups)

  # -- optional methods for MCMC (AIS, BDMC; jvae.inference) ------------------------------------

  def sample_prior(self, params, key, batch, *, num_samples: int):
    """(z_1, z_2) ~ p(z_2) p(z_1|z_2), ancestrally, each ``(K, batch, d_l)`` like ``propose``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
      raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    n = self._check_x(data_of(batch)).shape[0]
    return self._sample_prior(params["decoder"], key, (num_samples, n))

  def log_q(self, params, batch, z) -> Array:
    """log q(z_1, z_2|x) at given (z_1, z_2), leaves ``(K, batch, d_l)``: ``(K, batch)``."""
    x = self._check_x(data_of(batch))
    z1, z2 = z
    enc = params["encoder"]
    inputs = {"x": x, "z1": z1, "z2": z2}
    return sum(self._log_prob(enc, name, inputs, inputs[_latent(name)]) for name in enc)

  def sample_joint(self, params, key, num: int):
    """((z_1, z_2), x) ~ p(z) p(x|z): z leaves ``(1, num, d_l)`` (propose's shape, K = 1), x
    ``(num, D)``; z is an exact sample of p(z|x) (bidirectional Monte Carlo)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
      raise ValueError(f"num must be an integer >= 1, got {num!r}")
    dec = params["decoder"]
    z_key, x_key = jax.random.split(key)
    z1, z2 = self._sample_prior(dec, z_key, (1, num))
    noise = self.noise_scale * jax.random.normal(x_key, (num, self.data_dim))
    return (z1, z2), z1[0] @ dec["W"].T + dec["b"] + noise

  def _sample_prior(self, dec, key, shape):
    k1, k2 = jax.random.split(key)
    d1, d2 = self.latent_dims
    z2 = jax.random.normal(k2, (*shape, d2))
    z1 = z2 @ dec["A"].T + dec["a"] + jnp.exp(dec["log_s1"]) * jax.random.normal(k1, (*shape, d1))
    return z1, z2

  # -- exact quantities -------------------------------------------------------------------------

  def exact_log_marginal(self, params, x: Array) -> Array:
    """log p(x) = log N(x; W a + b, W (A Aᵀ + S_1) Wᵀ + s² I); x ``(batch, D)`` → ``(batch,)``."""
    _, _, mean_x, _, cov_x = self._joint(params["decoder"])
    chol = jnp.linalg.cholesky(cov_x)
    eps = jax.scipy.linalg.solve_triangular(chol, (self._check_x(x) - mean_x).T, lower=True).T
    return _std_normal_log_prob(eps) - jnp.sum(jnp.log(jnp.diag(chol)))

  def exact_posterior(self, params, x: Array) -> tuple[Array, Array]:
    """p(z_1, z_2|x): mean ``(batch, d_1 + d_2)`` (z_1 first) and covariance ``(d, d)``."""
    gain, offset, cov = self._posterior_affine(params["decoder"])
    return self._check_x(x) @ gain.T + offset, cov

  def exact_posterior_params(self, params):
    """``params`` with the encoder set so that q(z_1, z_2|x) = p(z_1, z_2|x) exactly.

    With the posterior N(G x + g, Σ) split into blocks 1 (z_1) and 2 (z_2): bottom-up,
    q(z_1|x) = N(G_1 x + g_1, Σ_11) and q(z_2|z_1) = N(B z_1 + g_2 − B g_1, Σ_22 − B Σ_12),
    B = Σ_21 Σ_11⁻¹ (G_2 − B G_1 = 0 since z_2 ⊥ x | z_1); top-down, q(z_2|x) = N(G_2 x + g_2,
    Σ_22) and q(z_1|z_2, x) = N(M z_2 + (G_1 − M G_2) x + g_1 − M g_2, Σ_11 − M Σ_21),
    M = Σ_12 Σ_22⁻¹.
    """
    gain, offset, cov = self._posterior_affine(params["decoder"])
    d1 = self.latent_dims[0]
    g1, g2, o1, o2 = gain[:d1], gain[d1:], offset[:d1], offset[d1:]
    s11, s12, s21, s22 = cov[:d1, :d1], cov[:d1, d1:], cov[d1:, :d1], cov[d1:, d1:]
    if self.order == "bottom_up":
      b = jnp.linalg.solve(s11, s12).T                        # Σ_21 Σ_11⁻¹
      enc = {"q1": _lg_params({"Ax": g1}, o1, s11),
             "q2": _lg_params({"Az1": b}, o2 - b @ o1, s22 - b @ s12)}
    else:
      m = jnp.linalg.solve(s22, s21).T                        # Σ_12 Σ_22⁻¹
      enc = {"q2": _lg_params({"Ax": g2}, o2, s22),
             "q1": _lg_params({"Ax": g1 - m @ g2, "Az2": m}, o1 - m @ o2, s11 - m @ s21)}
    return {**params, "encoder": enc}

  def exact_elbo(self, params, x: Array) -> Array:
    """E_q[log p(x, z) − log q(z|x)] = log p(x) − KL(q(z|x) ‖ p(z|x)), ``(batch,)``.

    Closed form and differentiable in every parameter: q's joint over (z_1, z_2) is Gaussian
    N(m(x), C) (linear-Gaussian conditionals), and the KL between Gaussians is
    ½[tr(Σ⁻¹C) + (μ − m)ᵀΣ⁻¹(μ − m) − d + log|Σ| − log|C|].
    """
    mean_p, cov_p = self.exact_posterior(params, x)
    mean_q, cov_q = self._q_joint(params["encoder"], self._check_x(x))
    chol_p = jnp.linalg.cholesky(cov_p)
    chol_q = jnp.linalg.cholesky(cov_q)
    solve = lambda rhs: jax.scipy.linalg.solve_triangular(chol_p, rhs, lower=True)
    trace = jnp.sum(jnp.square(solve(chol_q)))
    maha = jnp.sum(jnp.square(solve((mean_p - mean_q).T)), axis=0)
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(chol_p))) - 2 * jnp.sum(jnp.log(jnp.diag(chol_q)))
    kl = 0.5 * (trace + maha - mean_p.shape[-1] + logdet)
    return self.exact_log_marginal(params, x) - kl

  # -- internals --------------------------------------------------------------------------------

  def _check_x(self, x) -> Array:
    if getattr(x, "ndim", None) != 2 or x.shape[1] != self.data_dim:
      raise ValueError(f"x must have shape (batch, {self.data_dim}), got "
                       f"{tuple(getattr(x, 'shape', ()))}")
    return x

  def _loc(self, p, name: str, inputs) -> Array:
    """The mean Σ_u A_u u + c of the conditional ``name`` of q (inputs broadcast)."""
    return p["c"] + sum(inputs[u] @ p[f"A{u}"].T for u in self._inputs[name])

  def _draw(self, enc, name: str, inputs, key, num_samples: int | None):
    """z = μ + L ε and log q(z) = log N(ε; 0, I) − Σ log L_ii (``num_samples`` new axis)."""
    p = enc[name]
    loc = self._loc(p, name, inputs)
    shape = loc.shape if num_samples is None else (num_samples, *loc.shape)
    eps = jax.random.normal(key, shape, loc.dtype)
    return loc + eps @ _tri(p).T, _std_normal_log_prob(eps) - jnp.sum(p["log_scale"])

  def _log_prob(self, enc, name: str, inputs, z: Array) -> Array:
    """log q(z|inputs) with ε = L⁻¹(z − μ): one triangular solve for all samples."""
    p = enc[name]
    resid = z - self._loc(p, name, inputs)
    flat = resid.reshape(-1, resid.shape[-1])
    eps = jax.scipy.linalg.solve_triangular(_tri(p), flat.T, lower=True).T.reshape(resid.shape)
    return _std_normal_log_prob(eps) - jnp.sum(p["log_scale"])

  def _joint(self, dec):
    """Mean and covariance of v = (z_1, z_2), of x, and Cov(x, v)."""
    d1, d2 = self.latent_dims
    w, a_mat = dec["W"], dec["A"]
    c1 = a_mat @ a_mat.T + jnp.diag(jnp.exp(2 * dec["log_s1"]))
    mean_v = jnp.concatenate([dec["a"], jnp.zeros((d2,))])
    cov_v = jnp.block([[c1, a_mat], [a_mat.T, jnp.eye(d2)]])
    cov_xv = w @ cov_v[:d1]
    cov_x = w @ c1 @ w.T + self.noise_scale ** 2 * jnp.eye(self.data_dim)
    return mean_v, cov_v, w @ dec["a"] + dec["b"], cov_xv, cov_x

  def _posterior_affine(self, dec):
    """p(v|x) = N(G x + g, Σ): returns (G ``(d, D)``, g ``(d,)``, Σ ``(d, d)``)."""
    mean_v, cov_v, mean_x, cov_xv, cov_x = self._joint(dec)
    gain = jnp.linalg.solve(cov_x, cov_xv).T
    cov = cov_v - gain @ cov_xv
    return gain, mean_v - gain @ mean_x, 0.5 * (cov + cov.T)

  def _q_joint(self, enc, x: Array) -> tuple[Array, Array]:
    """q's joint Gaussian over (z_1, z_2): mean ``(batch, d)``, covariance ``(d, d)``."""
    tri = {name: _tri(p) for name, p in enc.items()}
    if self.order == "bottom_up":
      q1, q2 = enc["q1"], enc["q2"]
      b = q2["Az1"]
      m1 = x @ q1["Ax"].T + q1["c"]
      m2 = m1 @ b.T + q2["c"]
      c11 = tri["q1"] @ tri["q1"].T
      c21 = b @ c11
      c22 = b @ c11 @ b.T + tri["q2"] @ tri["q2"].T
      cov = jnp.block([[c11, c21.T], [c21, c22]])
    else:
      q1, q2 = enc["q1"], enc["q2"]
      m = q1["Az2"]
      m2 = x @ q2["Ax"].T + q2["c"]
      m1 = m2 @ m.T + x @ q1["Ax"].T + q1["c"]
      c22 = tri["q2"] @ tri["q2"].T
      c12 = m @ c22
      c11 = m @ c22 @ m.T + tri["q1"] @ tri["q1"].T
      cov = jnp.block([[c11, c12], [c12.T, c22]])
    return jnp.concatenate([m1, m2], -1), cov


def two_layer_linear_gaussian(data_dim: int, latent_dims: tuple[int, int], *,
                              noise_scale: float = 1.0,
                              order: str = "bottom_up") -> TwoLayerLinearGaussian:
  """The two-layer linear-Gaussian oracle (see :class:`TwoLayerLinearGaussian`)."""
  return TwoLayerLinearGaussian(data_dim, tuple(latent_dims), noise_scale, order)


def _latent(name: str) -> str:
  return {"q1": "z1", "q2": "z2"}[name]


def _tri(p) -> Array:
  """L = strict_lower(lower) + diag(exp(log_scale)), as :class:`FullCovarianceGaussian` uses."""
  return jnp.tril(p["lower"], -1) + jnp.diag(jnp.exp(p["log_scale"]))


def _std_normal_log_prob(eps: Array) -> Array:
  """log N(ε; 0, I) over the last axis."""
  return -0.5 * jnp.sum(jnp.square(eps), -1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi)


def _diag_normal_log_prob(v: Array, loc, log_scale) -> Array:
  """log N(v; loc, diag exp(2 log_scale)) over the last axis."""
  return (_std_normal_log_prob((v - loc) * jnp.exp(-log_scale))
          - jnp.sum(jnp.broadcast_to(log_scale, v.shape), -1))


def _lg_params(kernels: dict[str, Array], offset: Array, cov: Array) -> dict[str, Array]:
  """Conditional params N(Σ_u A_u u + c, cov): Cholesky factor as ``log_scale`` and ``lower``."""
  chol = jnp.linalg.cholesky(0.5 * (cov + cov.T))
  return {**kernels, "c": offset, "log_scale": jnp.log(jnp.diag(chol)), "lower": chol}
