r"""Local variational inference: a Gaussian q_λᵢ(z) per data point, and variational EM (layer 5).

Amortized inference fits one encoder q_φ(z|x) for every x; local (non-amortized) inference gives
each data point i its own variational parameters λᵢ and maximises its own bound

.. math::
   \mathcal{L}(\lambda_i; \theta, x_i) = E_{q_{\lambda_i}(z)}[\log p_\theta(x_i, z)
   - \log q_{\lambda_i}(z)] \le \log p_\theta(x_i),

written against the model contract's ``log_joint`` alone, with reparameterized samples
z = μ + L ε, ε ~ N(0, I) (Hoffman et al. 2013; Cremer et al. 2018 use it to measure the
amortization gap; Kim et al. 2018 start it from the encoder).

λ is a :class:`LocalGaussian`, a pytree of arrays whose leading axis is the point: a batch's rows,
or a table of N rows indexed by ``jvae.Batch.index``. Two families (``posterior=``):

* ``"gaussian"``: factorized, q = N(μ, diag σ²), λ = (μ, log σ);
* ``"full_cov"``: q = N(μ, L Lᵀ) with L = L_mask ⊙ L′ + diag σ (L_mask strictly lower
  triangular), λ = (μ, log σ, L′); log|det L| = Σ log σᵢ, no decomposition needed
  (:class:`jvae.TriangularAffine`).

:func:`optimize_local` optimises the λᵢ of a batch with an optax optimizer in a ``lax.scan``;
:func:`variational_em` alternates that E-step with an M-step on the generative parameters θ,
keeping λ and its optimizer state as tables of which only the batch's rows move.

Works with any model whose z is a single array ``(K, batch, d)`` (``jvae.VAE``); starting from the
encoder (``init="amortized"``) needs the optional ``model.amortized_gaussian(params, batch) ->
(loc, scale, lower or None)``, which ``jvae.VAE`` has for Gaussian encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jvae.distributions.posteriors import FullCovarianceGaussian
from jvae.models.contract import check_batch, check_model
from jvae.objectives.log_weights import check_key, check_num_samples, tree_stop

Array = jax.Array

POSTERIORS = ("gaussian", "full_cov")
INITS = ("amortized", "prior")
LOCAL_ESTIMATORS = ("reparam", "stl")


class LocalGaussian(NamedTuple):
  """Local variational parameters λ of a Gaussian q_λ(z), one row per point; a pytree.

  Attributes:
    loc: μ, ``(N, d)``.
    log_scale: log σ, ``(N, d)``; σ = exp(log σ) is the diagonal of L.
    lower: L′, ``(N, d, d)``, of which only the strict lower triangle is used (full
      covariance, L = L_mask ⊙ L′ + diag σ); None for a factorized q.
  """

  loc: Array
  log_scale: Array
  lower: Array | None = None

  @property
  def posterior(self) -> str:
    """``"full_cov"`` when λ has a lower triangle, else ``"gaussian"``."""
    return "gaussian" if self.lower is None else "full_cov"

  @property
  def num_points(self) -> int:
    return int(self.loc.shape[0])

  @property
  def latent_dim(self) -> int:
    return int(self.loc.shape[-1])


# -- checks -------------------------------------------------------------------------------------


def check_posterior(posterior) -> str:
  """``posterior`` if it is one of :data:`POSTERIORS`, else a ValueError listing them."""
  if posterior not in POSTERIORS:
    raise ValueError(f"unknown posterior {posterior!r}; expected one of {POSTERIORS}")
  return posterior


def check_steps(steps, name: str = "steps") -> int:
  """``steps`` if it is an int ≥ 1, else a ValueError naming ``name``."""
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {steps!r}")
  return steps


def _check_init(init) -> None:
  if isinstance(init, LocalGaussian):
    return
  if not isinstance(init, str) or init not in INITS:
    raise ValueError(f"unknown init {init!r}; expected one of {INITS} or a LocalGaussian")


def _check_estimator(estimator) -> None:
  if estimator not in LOCAL_ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r} for local inference; expected one of "
                     f"{LOCAL_ESTIMATORS}")


def _check_optimizer(optimizer, name: str) -> None:
  if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update",
                                                                             None))):
    raise TypeError(f"{name} must be an optax GradientTransformation (with init and update), "
                    f"got {type(optimizer).__name__}")


def check_local(lam, num_points: int | None = None, latent_dim: int | None = None) -> None:
  """Raise a clear error unless ``lam`` is a :class:`LocalGaussian` of consistent shapes.

  Args:
    lam: the local parameters.
    num_points: the number of rows expected (the batch size), if known.
    latent_dim: d expected, if known.
  """
  if not isinstance(lam, LocalGaussian):
    raise TypeError(f"local parameters must be a jvae.inference.LocalGaussian, got "
                    f"{type(lam).__name__}")
  loc = lam.loc
  if getattr(loc, "ndim", None) != 2:
    raise ValueError(f"LocalGaussian.loc must have shape (N, d), got "
                     f"{tuple(getattr(loc, 'shape', ()))}")
  n, d = loc.shape
  if tuple(lam.log_scale.shape) != (n, d):
    raise ValueError(f"LocalGaussian.log_scale must have shape {(n, d)} like loc, got "
                     f"{tuple(lam.log_scale.shape)}")
  if lam.lower is not None and tuple(lam.lower.shape) != (n, d, d):
    raise ValueError(f"LocalGaussian.lower must have shape {(n, d, d)}, got "
                     f"{tuple(lam.lower.shape)}")
  if num_points is not None and n != num_points:
    raise ValueError(f"the local parameters have {n} rows but the batch has {num_points} "
                     "points; give one row per point (gather a table's rows by batch.index)")
  if latent_dim is not None and d != latent_dim:
    raise ValueError(f"the local parameters have latent size {d}, the model's z has "
                     f"{latent_dim}")


def latent_size(model, params, batch) -> int:
  """d of the model's z, read from the shapes of one proposal (nothing is computed).

  Raises:
    ValueError: the model's z is not a single array ``(K, batch, d)``.
  """
  shapes = jax.eval_shape(lambda p, b: model.propose(p, jax.random.key(0), b, num_samples=1).z,
                          params, batch)
  if not hasattr(shapes, "shape") or len(shapes.shape) != 3:
    got = jax.tree_util.tree_map(lambda s: s.shape, shapes)
    raise ValueError(f"local inference needs a model whose z is one array (K, batch, d); "
                     f"{type(model).__name__}'s z has shapes {got}")
  return int(shapes.shape[-1])


# -- λ: building and reading ---------------------------------------------------------------------


def local_table(num_points: int, latent_dim: int, *, posterior: str = "gaussian",
                dtype=jnp.float32) -> LocalGaussian:
  """N rows of λ at the standard normal N(0, I): μ = 0, log σ = 0 (and L′ = 0).

  Args:
    num_points: N ≥ 1 rows.
    latent_dim: d ≥ 1.
    posterior: ``"gaussian"`` or ``"full_cov"``.
    dtype: floating dtype of the arrays.
  Returns:
    A :class:`LocalGaussian` with leaves ``(N, d)`` (and ``(N, d, d)``).
  """
  check_steps(num_points, "num_points")
  check_steps(latent_dim, "latent_dim")
  check_posterior(posterior)
  zeros = jnp.zeros((num_points, latent_dim), dtype)
  full = posterior == "full_cov"
  lower = jnp.zeros((num_points, latent_dim, latent_dim), dtype) if full else None
  return LocalGaussian(zeros, zeros, lower)


def amortized_local(model, params, batch, *, posterior: str | None = None) -> LocalGaussian:
  """The encoder's q(z|x) for the batch's points as λ, via ``model.amortized_gaussian``.

  Args:
    model: a model with ``amortized_gaussian(params, batch) -> (loc, scale, lower or None)``.
    params: model parameters.
    batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    posterior: the family of λ: ``"gaussian"`` keeps the encoder's diagonal (its σ; a
      full-covariance encoder's off-diagonal part is dropped), ``"full_cov"`` adds a lower
      triangle (zero for a factorized encoder); None: the encoder's own family.
  Returns:
    :class:`LocalGaussian` with ``batch`` rows.
  """
  method = getattr(model, "amortized_gaussian", None)
  if not callable(method):
    raise TypeError(f"init='amortized' needs the encoder's Gaussian parameters, "
                    f"model.amortized_gaussian(params, batch) -> (loc, scale, lower or None), "
                    f"and {type(model).__name__} has no such method; use init='prior'")
  loc, scale, lower = method(params, batch)
  if posterior is None:
    posterior = "gaussian" if lower is None else "full_cov"
  check_posterior(posterior)
  log_scale = jnp.log(scale)
  if posterior == "gaussian":
    return LocalGaussian(loc, log_scale, None)
  if lower is None:
    lower = jnp.zeros((*loc.shape, loc.shape[-1]), loc.dtype)
  return LocalGaussian(loc, log_scale, lower)


def init_local(model, params, batch, *, init: str | LocalGaussian = "amortized",
               posterior: str = "gaussian") -> LocalGaussian:
  """λ for the batch's points: from the encoder, from N(0, I), or given.

  Args:
    model: any :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    params: model parameters.
    batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    init: ``"amortized"`` (the encoder's q(z|x), :func:`amortized_local`), ``"prior"``
      (N(0, I)) or a :class:`LocalGaussian` of ``batch`` rows (returned as is, after checks).
    posterior: ``"gaussian"`` or ``"full_cov"``.
  Returns:
    :class:`LocalGaussian` with ``batch`` rows.
  """
  _check_init(init)
  check_posterior(posterior)
  b = check_batch(batch)
  n = b.x.shape[0]
  if isinstance(init, LocalGaussian):
    check_local(init, n)
    if init.posterior != posterior:
      raise ValueError(f"init is a {init.posterior!r} LocalGaussian but posterior={posterior!r}")
    return init
  if init == "amortized":
    lam = amortized_local(model, params, b, posterior=posterior)
    check_local(lam, n)
    return lam
  return local_table(n, latent_size(model, params, b), posterior=posterior, dtype=b.x.dtype)


def local_distribution(lam: LocalGaussian) -> distrax.Distribution:
  """q_λ(z) as a distrax distribution with batch shape ``(N,)`` and event shape ``(d,)``.

  ``distrax.MultivariateNormalDiag(μ, σ)`` for a factorized λ, else
  :class:`jvae.FullCovarianceGaussian` (z = μ + L ε, log q = log N(ε) − Σ log σᵢ).
  """
  scale = jnp.exp(lam.log_scale)
  if lam.lower is None:
    return distrax.MultivariateNormalDiag(lam.loc, scale)
  return FullCovarianceGaussian(lam.loc, scale, lam.lower)


def local_covariance(lam: LocalGaussian) -> Array:
  """Σ = L Lᵀ of every row, ``(N, d, d)``."""
  return local_distribution(lam).covariance()


# -- the local bound -----------------------------------------------------------------------------


def _log_weights(model, params, key, batch, lam, num_samples, beta, estimator):
  """log w_k = log p(x|z_k) + β(log p(z_k) − log q_λ(z_k)), z_k ~ q_λ: ``(K, batch)``."""
  q = local_distribution(lam)
  z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
  if estimator == "stl":  # Roeder et al. 2017: log q at stopped λ, z keeps its path.
    log_q = local_distribution(tree_stop(lam)).log_prob(z)
  joint = model.log_joint(params, batch, z)
  return joint.log_lik + beta * (joint.log_prior - log_q)


def chunked_mean(log_weights: Callable[[Array, int], Array], key, num_samples: int,
                 chunk_size: int, *, return_stderr: bool = False):
  """The mean over K samples of ``log_weights(key_c, chunk) -> (chunk, batch)``, chunk by chunk.

  A ``lax.scan`` over ⌈K / chunk⌉ chunks with keys ``fold_in(key, c)`` (samples past K masked),
  so memory is bounded by ``chunk × batch`` whatever K is. With one chunk, ``key`` is used as is.
  With ``return_stderr``, also the Monte-Carlo standard error of each mean, sd / √K.
  """
  chunk = min(chunk_size, num_samples)
  n_chunks = -(-num_samples // chunk)

  def moments(lw, valid):
    """Count, mean and Σ (lw − mean)² of a chunk's valid samples (centred: no cancellation)."""
    count = jnp.sum(valid).astype(lw.dtype)
    mean = jnp.sum(jnp.where(valid[:, None], lw, 0.0), axis=0) / count
    m2 = jnp.sum(jnp.where(valid[:, None], jnp.square(lw - mean), 0.0), axis=0)
    return count, mean, m2

  if n_chunks == 1:
    _, mean, m2 = moments(log_weights(key, num_samples), jnp.ones((num_samples,), bool))
  else:
    def step(total, c):
      n, mean, m2 = total
      valid = (c * chunk + jnp.arange(chunk)) < num_samples
      c_n, c_mean, c_m2 = moments(log_weights(jax.random.fold_in(key, c), chunk), valid)
      delta, n_new = c_mean - mean, n + c_n  # Chan et al.'s pairwise merge of the moments
      return (n_new, mean + delta * c_n / n_new, m2 + c_m2 + delta ** 2 * n * c_n / n_new), None

    probe = jax.eval_shape(lambda k: log_weights(k, chunk), key)
    zeros = jnp.zeros(probe.shape[1:], probe.dtype)
    init = (jnp.zeros((), probe.dtype), zeros, zeros)
    (_, mean, m2), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
  if not return_stderr:
    return mean
  return mean, jnp.sqrt(m2 / max(num_samples - 1, 1) / num_samples)


def local_elbo(model, params, key, batch, lam: LocalGaussian, *, num_samples: int = 1,
               beta=1.0, estimator: str = "reparam", chunk_size: int | None = None,
               return_stderr: bool = False):
  r"""The local ELBO of each point, E_{q_λᵢ}[log p(xᵢ, z) − log q_λᵢ(z)], by K samples.

  .. math::
     \hat{\mathcal L}_i = \frac1K \sum_k \log p(x_i | z_k) + \beta(\log p(z_k) - \log
     q_{\lambda_i}(z_k)), \quad z_k = \mu_i + L_i \varepsilon_k,\ \varepsilon_k \sim N(0, I).

  Only the model's ``log_joint`` is used. Differentiable in ``params`` (θ) and ``lam``.

  Args:
    model: any :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    params: model parameters (only the generative ones matter).
    key: PRNG key for ε.
    batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    lam: :class:`LocalGaussian` with one row per point of the batch.
    num_samples: K ≥ 1.
    beta: weight of log p(z) − log q (KL warm-up); 1 is the bound.
    estimator: ``"reparam"`` (the full pathwise gradient) or ``"stl"`` (sticking the landing,
      Roeder et al. 2017: log q at stopped λ; same value, unbiased λ-gradient whose variance
      vanishes as q_λ → p(z|x)).
    chunk_size: draw the K samples this many at a time (bounded memory for large K);
      None: all at once.
    return_stderr: also return each estimate's Monte-Carlo standard error, sd(log w) / √K.
  Returns:
    ``(batch,)``, or a pair of them with ``return_stderr``.
  """
  check_model(model)
  check_key(key)
  check_num_samples(num_samples)
  _check_estimator(estimator)
  b = check_batch(batch)
  check_local(lam, b.x.shape[0])
  fn = lambda k, size: _log_weights(model, params, k, b, lam, size, beta, estimator)
  if chunk_size is None or chunk_size >= num_samples:
    if not return_stderr:
      return jnp.mean(fn(key, num_samples), axis=0)
    chunk_size = num_samples
  check_num_samples(chunk_size, "chunk_size")
  return chunked_mean(fn, key, num_samples, chunk_size, return_stderr=return_stderr)


# -- optimising λ ---------------------------------------------------------------------------------


def optimize_local(model, params, key, batch, *, steps: int,
                   optimizer: optax.GradientTransformation,
                   init: str | LocalGaussian = "amortized", posterior: str = "gaussian",
                   num_samples: int = 1, estimator: str = "stl",
                   beta=1.0) -> tuple[LocalGaussian, Array]:
  r"""λ* = argmax_λ Σᵢ L(λᵢ; θ, xᵢ) for the batch's points by ``steps`` optimizer steps.

  Stochastic variational inference on each point's own q_λᵢ (Hoffman et al. 2013), as used by
  Cremer et al. (2018, Sec. 3) for L[q*]: the loss is −Σᵢ L̂ᵢ (a sum, so each row's gradient is
  its own point's, whatever the batch size), each step with fresh ε from ``fold_in(key, t)``,
  all inside one ``lax.scan``. θ is held fixed. Pure and jittable with ``steps``, ``optimizer``,
  ``init`` (a string), ``posterior``, ``num_samples`` and ``estimator`` static. An element-wise
  optimizer (Adam, SGD, …) optimises every row independently; one that couples leaves (global
  norm clipping) couples the points.

  Args:
    model: any :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    params: model parameters (fixed).
    key: PRNG key.
    batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    steps: number of optimizer steps T ≥ 1.
    optimizer: an optax transformation, e.g. ``optax.adam(1e-2)``.
    init: ``"amortized"`` (start at the encoder's q(z|x); needs ``model.amortized_gaussian``),
      ``"prior"`` (start at N(0, I)) or a :class:`LocalGaussian` of ``batch`` rows.
    posterior: ``"gaussian"`` (factorized) or ``"full_cov"``.
    num_samples: K ≥ 1 samples per step.
    estimator: ``"stl"`` (default) or ``"reparam"``, see :func:`local_elbo`.
    beta: weight of log p(z) − log q; 1 optimises the ELBO.
  Returns:
    ``(lambda_star, trace)``: the :class:`LocalGaussian` after T steps, and ``(T, batch)`` the
    per-point bound estimate at the start of each step (before its update).
  """
  check_model(model)
  check_key(key)
  check_steps(steps)
  _check_optimizer(optimizer, "optimizer")
  check_num_samples(num_samples)
  _check_estimator(estimator)
  b = check_batch(batch)
  lam0 = init_local(model, params, b, init=init, posterior=posterior)
  return _optimize(model, params, key, b, lam0, steps, optimizer, num_samples, estimator, beta)


def _optimize(model, params, key, batch, lam0, steps, optimizer, num_samples, estimator, beta):
  def loss(lam, k):
    values = jnp.mean(_log_weights(model, params, k, batch, lam, num_samples, beta, estimator),
                      axis=0)
    return -jnp.sum(values), values

  def body(carry, t):
    lam, opt_state = carry
    (_, values), grads = jax.value_and_grad(loss, has_aux=True)(lam, jax.random.fold_in(key, t))
    updates, opt_state = optimizer.update(grads, opt_state, lam)
    return (optax.apply_updates(lam, updates), opt_state), values

  (lam, _), trace = jax.lax.scan(body, (lam0, optimizer.init(lam0)), jnp.arange(steps))
  return lam, trace


# -- variational EM ------------------------------------------------------------------------------


class EMState(NamedTuple):
  """The state of variational EM with local parameters; a plain pytree.

  Attributes:
    params: model parameters θ (and, unused, the encoder's).
    opt_state: ``optimizer_global``'s state for ``params``.
    local: the λ table, a :class:`LocalGaussian` with N rows.
    local_opt_state: ``optimizer_local``'s state *per row*: every leaf has leading axis N
      (Adam's step count included), so each point's optimiser sees only its own steps.
    visited: ``(N,)`` bool, rows that have had an E-step.
    step: number of steps taken (int32 scalar).
    key: PRNG key, split at every step.
  """

  params: Any
  opt_state: Any
  local: LocalGaussian
  local_opt_state: Any
  visited: Array
  step: Array
  key: Array


class VariationalEM(NamedTuple):
  """Pure variational-EM functions (like optax's GradientTransformation or blackjax's kernels).

  Attributes:
    init: ``(params, num_points, key) -> EMState``.
    step: ``(state, batch) -> (state, metrics)`` for a :class:`jvae.Batch` with ``index``.
  """

  init: Callable[..., EMState]
  step: Callable[..., tuple[EMState, dict]]


def _batch_index(batch, num_points: int) -> Array:
  """``batch.index`` checked: present, integer ``(batch,)``, and (when concrete) in range."""
  b = check_batch(batch)
  if b.index is None:
    raise ValueError("variational EM needs each point's row in the λ table: give a jvae.Batch "
                     "with index=(batch,) int positions in the data set (e.g. "
                     "jvae.Batch(x, index=jnp.arange(N)) for the whole data set), got no index")
  idx = b.index
  if not jnp.issubdtype(idx.dtype, jnp.integer) or idx.ndim != 1:
    raise TypeError(f"batch.index must be a (batch,) integer array, got {idx.dtype}"
                    f"{list(idx.shape)}")
  try:
    concrete = np.asarray(idx)
  except jax.errors.TracerArrayConversionError:  # under jit: not checkable here
    concrete = None
  if concrete is not None and concrete.size:
    lo, hi = int(concrete.min()), int(concrete.max())
    if lo < 0 or hi >= num_points:
      raise ValueError(f"batch.index must lie in [0, {num_points}) (the λ table's rows), got "
                       f"values in [{lo}, {hi}]")
  return idx


def variational_em(model, *, optimizer_local: optax.GradientTransformation,
                   optimizer_global: optax.GradientTransformation, e_steps: int,
                   num_samples: int = 1, posterior: str = "gaussian", init: str = "prior",
                   estimator: str = "stl", latent_dim: int | None = None) -> VariationalEM:
  r"""Variational EM with local parameters: E-step on the batch's λᵢ, M-step on θ.

  For a batch B with data-set indices ``batch.index``:

  * E-step: gather the rows λ_B (and their optimizer state) from the tables and take
    ``e_steps`` steps of ``optimizer_local`` on −Σ_{i∈B} L̂(λᵢ; θ, xᵢ) (as
    :func:`optimize_local`), θ fixed;
  * M-step: one step of ``optimizer_global`` on −mean_{i∈B} L̂(λᵢ; θ, xᵢ) in θ with the new
    λ_B fixed (fresh ε); the gradient only reaches the generative parameters (an encoder in
    ``params`` gets zero gradient);
  * scatter λ_B and its optimizer state back: rows not in the batch are not touched at all
    (bitwise the same), so the λ table is a warm start for each point's next visit.

  This is the stochastic variational EM of Hoffman et al. (2013) with per-point local
  parameters (Cremer et al. 2018 and Kim et al. 2018 use it as the non-amortized baseline).
  Indices within a batch must be distinct (a shuffled permutation, as ``jvae.trainer``
  slices). The optimizer state of the table is per row (``jax.vmap(optimizer_local.init)``),
  so a stateful optimizer (Adam's moments and step count) counts each row's own updates.

  Args:
    model: any :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    optimizer_local: optax transformation for λ (per row).
    optimizer_global: optax transformation for θ.
    e_steps: E-step iterations per visit, ≥ 1.
    num_samples: K samples per bound estimate.
    posterior: ``"gaussian"`` or ``"full_cov"``.
    init: how a row starts on its first visit: ``"prior"`` (N(0, I), the table's initial
      value) or ``"amortized"`` (the encoder's q(z|x) at the current params, via
      ``model.amortized_gaussian``).
    estimator: E-step gradient, ``"stl"`` or ``"reparam"`` (:func:`local_elbo`).
    latent_dim: d of the table; default ``model.latent_dim``.
  Returns:
    :class:`VariationalEM` with ``init(params, num_points, key) -> EMState`` and
    ``step(state, batch) -> (state, metrics)``; metrics are batch means of the bound before
    the E-step (``bound_before``), after it (``bound``, the value the M-step differentiates)
    and ``loss = −bound``.
  """
  check_model(model)
  _check_optimizer(optimizer_local, "optimizer_local")
  _check_optimizer(optimizer_global, "optimizer_global")
  check_steps(e_steps, "e_steps")
  check_num_samples(num_samples)
  check_posterior(posterior)
  _check_estimator(estimator)
  if init not in INITS:
    raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
  if init == "amortized" and not callable(getattr(model, "amortized_gaussian", None)):
    raise TypeError(f"init='amortized' needs model.amortized_gaussian(params, batch), which "
                    f"{type(model).__name__} does not have; use init='prior'")
  if latent_dim is not None:
    check_steps(latent_dim, "latent_dim")

  def init_fn(params, num_points: int, key) -> EMState:
    check_key(key)
    check_steps(num_points, "num_points")
    d = latent_dim
    if d is None:
      d = getattr(model, "latent_dim", None)
      if not isinstance(d, int):
        raise ValueError(f"the λ table needs the latent size: pass variational_em(..., "
                         f"latent_dim=d); {type(model).__name__} has no latent_dim")
    table = local_table(num_points, d, posterior=posterior)
    return EMState(params, optimizer_global.init(params), table,
                   jax.vmap(optimizer_local.init)(table), jnp.zeros((num_points,), bool),
                   jnp.zeros((), jnp.int32), key)

  def step_fn(state: EMState, batch):
    b = check_batch(batch)
    idx = _batch_index(b, state.local.num_points)
    check_local(state.local, latent_dim=None)
    key, k_e, k_m = jax.random.split(state.key, 3)
    gather = lambda tree: jax.tree_util.tree_map(lambda a: a[idx], tree)
    rows, opt_rows = gather(state.local), gather(state.local_opt_state)
    if init == "amortized":
      fresh = amortized_local(model, state.params, b, posterior=posterior)
      seen = state.visited[idx]
      rows = jax.tree_util.tree_map(
          lambda r, f: jnp.where(seen.reshape(seen.shape + (1,) * (r.ndim - 1)), r, f),
          rows, fresh)
    gen = tree_stop(state.params)

    def row_loss(lam, k):
      values = jnp.mean(_log_weights(model, gen, k, b, lam, num_samples, 1.0, estimator), 0)
      return -jnp.sum(values), values

    def e_body(carry, t):
      lam, opt = carry
      (_, values), grads = jax.value_and_grad(row_loss, has_aux=True)(
          lam, jax.random.fold_in(k_e, t))
      updates, opt = jax.vmap(optimizer_local.update)(grads, opt, lam)
      return (optax.apply_updates(lam, updates), opt), values

    (rows, opt_rows), trace = jax.lax.scan(e_body, (rows, opt_rows), jnp.arange(e_steps))
    fixed = tree_stop(rows)

    def m_loss(params):
      values = jnp.mean(_log_weights(model, params, k_m, b, fixed, num_samples, 1.0, "reparam"),
                        0)
      return -jnp.mean(values)

    loss, grads = jax.value_and_grad(m_loss)(state.params)
    updates, opt_state = optimizer_global.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scatter = lambda table, new: jax.tree_util.tree_map(lambda t, r: t.at[idx].set(r), table, new)
    new_state = EMState(params, opt_state, scatter(state.local, rows),
                        scatter(state.local_opt_state, opt_rows),
                        state.visited.at[idx].set(True), state.step + 1, key)
    metrics = {"loss": loss, "bound": -loss, "bound_before": jnp.mean(trace[0])}
    return new_state, metrics

  return VariationalEM(init_fn, step_fn)
