r"""Discrete latents and their continuous relaxations, as pure array functions (layer 2).

Arrays in, arrays out: no distribution objects and no Flax, so a caller decides exactly where a
gradient is stopped (a score-function estimator needs log q at live parameters of a *stopped*
sample; a relaxation needs the sample itself to carry the gradient).

Discrete latents
  Bernoulli z ∈ {0, 1} with logits l: log q(z) = z log σ(l) + (1−z) log σ(−l); categorical
  z ∈ {0, 1}^C one-hot with logits l: log q(z) = Σ_c z_c log softmax(l)_c. Samples are
  gradient-free (:func:`sample_bernoulli`, :func:`sample_categorical`); closed-form KLs per
  variable (:func:`bernoulli_kl`, :func:`categorical_kl`).

Relaxations (Maddison et al. 2017, "The Concrete Distribution: A Continuous Relaxation of Discrete
Random Variables"; Jang et al. 2017, "Categorical Reparameterization with Gumbel-Softmax")
  *Binary Concrete in logit space*: y = (l + log u − log(1−u))/τ, u ~ U(0, 1), is a logistic
  variable with location l/τ and scale 1/τ; σ(y) is the relaxed Bernoulli sample on (0, 1), and
  as τ → 0, σ(y) → 1[l + L > 0] ~ Bernoulli(σ(l)) (L the logistic noise).
  *ExpConcrete*: y = log softmax((l + G)/τ), G i.i.d. Gumbel(0, 1), a point on the log-simplex;
  exp(y) is the Concrete (Gumbel-softmax) sample and argmax y ~ Categorical(softmax(l)) for every
  τ. Densities are those of Maddison et al. App. C, in the space where they are numerically
  stable (logit / log-simplex), so the ELBO of a relaxed model uses log q(y) − log p(y) there.
  Both samples are reparameterized: the gradient flows through ``logits`` (and ``temperature``).

Every function is stable for logits of ±1e4: values and gradients stay finite (log_sigmoid,
softplus, log_softmax and logsumexp throughout, never log(sigmoid) or log(softmax)).

Shapes: ``logits`` of a Bernoulli is ``(*batch)``; of a categorical ``(*batch, C)`` with the
categories on the last axis. Samplers prepend a sample axis: ``(K, *logits.shape)``. Log-densities
are per variable, ``(*batch)``, unless ``event_ndims`` trailing variable axes are summed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jvae.bounds.numerics import check_number

Array = jax.Array


# -- checks --------------------------------------------------------------------------------------


def _float(a) -> Array:
  a = jnp.asarray(a)
  return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float32)


def _check_num_samples(num_samples, what: str) -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"{what}: num_samples must be an integer >= 1, got {num_samples!r}")
  return num_samples


def _check_temperature(temperature, what: str) -> Array:
  check_number(temperature, f"{what} temperature", minimum=0.0, strict=True)
  t = jnp.asarray(temperature)
  if t.ndim != 0:
    raise ValueError(f"{what}: temperature must be a scalar, got shape {tuple(t.shape)}")
  return t


def _broadcast(value, logits, what: str, *, categorical: bool = False) -> tuple[Array, Array]:
  """``value`` and ``logits`` as floats, after checking they broadcast (and share C)."""
  value, logits = _float(value), _float(logits)
  if categorical:
    if logits.ndim < 1 or value.ndim < 1 or value.shape[-1] != logits.shape[-1]:
      raise ValueError(f"{what}: expected the last (category) axis of the value "
                       f"{tuple(value.shape)} to match that of logits {tuple(logits.shape)}")
  try:
    jnp.broadcast_shapes(value.shape, logits.shape)
  except ValueError:
    raise ValueError(f"{what}: the value of shape {tuple(value.shape)} does not broadcast "
                     f"against logits of shape {tuple(logits.shape)}") from None
  return value, logits


def _reduce(per_variable: Array, event_ndims: int, what: str) -> Array:
  """Sum the trailing ``event_ndims`` axes of per-variable log-densities."""
  if isinstance(event_ndims, bool) or not isinstance(event_ndims, int) or not (
      0 <= event_ndims <= per_variable.ndim):
    raise ValueError(f"{what}: event_ndims must be an integer in [0, {per_variable.ndim}] "
                     f"(the per-variable log-density has shape {tuple(per_variable.shape)}), "
                     f"got {event_ndims!r}")
  if event_ndims == 0:
    return per_variable
  return jnp.sum(per_variable, axis=tuple(range(-event_ndims, 0)))


# -- Bernoulli -----------------------------------------------------------------------------------


def bernoulli_log_prob(z: Array, logits: Array, *, event_ndims: int = 0) -> Array:
  r"""log Bernoulli(z | σ(l)) of binary latents, per variable or summed.

  .. math:: \log q(z) = z \log σ(l) + (1 − z) \log σ(−l),

  with ``log_sigmoid`` on both terms: finite with the finite gradient z − σ(l) for every finite
  logit (±1e4 included). The gradient flows to ``logits`` only where the caller lets it (pass a
  stopped z for the score function).

  Args:
    z: latent values in {0, 1}, any shape broadcasting against ``logits``, e.g. ``(K, B, D)``.
    logits: l, e.g. ``(B, D)``.
    event_ndims: how many trailing axes to sum (0: per variable).
  Returns:
    The broadcast shape of ``z`` and ``logits`` without its last ``event_ndims`` axes.
  """
  z, logits = _broadcast(z, logits, "bernoulli_log_prob")
  per = z * jax.nn.log_sigmoid(logits) + (1.0 - z) * jax.nn.log_sigmoid(-logits)
  return _reduce(per, event_ndims, "bernoulli_log_prob")


def sample_bernoulli(key, logits: Array, *, num_samples: int) -> Array:
  """z ~ Bernoulli(σ(l)), gradient-free: ``(K, *logits.shape)`` floats in {0, 1}."""
  _check_num_samples(num_samples, "sample_bernoulli")
  logits = jax.lax.stop_gradient(_float(logits))
  z = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (num_samples, *logits.shape))
  return z.astype(logits.dtype)


def bernoulli_kl(q_logits: Array, p_logits: Array) -> Array:
  r"""KL(Bernoulli(σ(q)) ‖ Bernoulli(σ(p))) per variable, in closed form.

  .. math:: σ(q)\,[\log σ(q) − \log σ(p)] + σ(−q)\,[\log σ(−q) − \log σ(−p)],

  every log-probability a ``log_sigmoid``, so each bracket is finite and a vanishing σ only
  multiplies a finite number (e.g. q = 1e4, p = −1e4 gives 1e4 exactly). Shape: the broadcast of
  the two.
  """
  q_logits, p_logits = _broadcast(q_logits, p_logits, "bernoulli_kl")
  log_q1, log_q0 = jax.nn.log_sigmoid(q_logits), jax.nn.log_sigmoid(-q_logits)
  log_p1, log_p0 = jax.nn.log_sigmoid(p_logits), jax.nn.log_sigmoid(-p_logits)
  return (jax.nn.sigmoid(q_logits) * (log_q1 - log_p1)
          + jax.nn.sigmoid(-q_logits) * (log_q0 - log_p0))


# -- categorical ---------------------------------------------------------------------------------


def categorical_log_prob(z_onehot: Array, logits: Array, *, event_ndims: int = 0) -> Array:
  r"""log Categorical(z | softmax(l)) = Σ_c z_c log softmax(l)_c of one-hot latents.

  Args:
    z_onehot: one-hot values ``(..., C)`` broadcasting against ``logits``, e.g. ``(K, B, D, C)``.
    logits: l ``(..., C)``, e.g. ``(B, D, C)``.
    event_ndims: how many trailing *variable* axes (after the category axis) to sum.
  Returns:
    The broadcast shape without the category axis and its last ``event_ndims`` axes.
  """
  z, logits = _broadcast(z_onehot, logits, "categorical_log_prob", categorical=True)
  per = jnp.sum(z * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return _reduce(per, event_ndims, "categorical_log_prob")


def sample_categorical(key, logits: Array, *, num_samples: int) -> Array:
  """z ~ Categorical(softmax(l)) one-hot, gradient-free: ``(K, *logits.shape)`` floats."""
  _check_num_samples(num_samples, "sample_categorical")
  logits = jax.lax.stop_gradient(_float(logits))
  if logits.ndim < 1:
    raise ValueError(f"sample_categorical: logits must have a category axis (..., C), got shape "
                     f"{tuple(logits.shape)}")
  index = jax.random.categorical(key, logits, axis=-1, shape=(num_samples, *logits.shape[:-1]))
  return jax.nn.one_hot(index, logits.shape[-1], dtype=logits.dtype)


def categorical_kl(q_logits: Array, p_logits: Array) -> Array:
  r"""KL(Cat(softmax(q)) ‖ Cat(softmax(p))) = Σ_c π_c (log π_c − log ρ_c) per variable.

  With log-probabilities from ``log_softmax`` (finite for logits of ±1e4), a category of
  vanishing π_c contributes 0 · finite. Shape: the broadcast of the two without the category
  axis.
  """
  q_logits, p_logits = _broadcast(q_logits, p_logits, "categorical_kl", categorical=True)
  log_pi = jax.nn.log_softmax(q_logits, axis=-1)
  log_rho = jax.nn.log_softmax(p_logits, axis=-1)
  return jnp.sum(jnp.exp(log_pi) * (log_pi - log_rho), axis=-1)


# -- Binary Concrete (relaxed Bernoulli), in logit space ------------------------------------------


def binary_concrete_sample(key, logits: Array, temperature, *, num_samples: int) -> Array:
  r"""y = (l + log u − log(1 − u))/τ, u ~ U(0, 1): ``(K, *logits.shape)``, reparameterized.

  y is Logistic(l/τ, 1/τ); the relaxed Bernoulli sample is σ(y) and the hard one 1[y > 0]
  (:func:`hard_bernoulli`), which is Bernoulli(σ(l)) for every τ (Maddison et al. 2017, Sec. 3.3
  and App. C). The logistic noise comes from ``jax.random.logistic`` (finite). The gradient
  flows through ``logits`` and ``temperature`` (a float or a traced scalar > 0).
  """
  _check_num_samples(num_samples, "binary_concrete_sample")
  t = _check_temperature(temperature, "binary_concrete_sample")
  logits = _float(logits)
  noise = jax.random.logistic(key, (num_samples, *logits.shape), logits.dtype)
  return (logits + noise) / t.astype(logits.dtype)


def binary_concrete_log_prob(y: Array, logits: Array, temperature, *,
                             event_ndims: int = 0) -> Array:
  r"""The density of y = (l + L)/τ, L ~ Logistic(0, 1), in logit space (Maddison et al. App. C).

  .. math:: \log p(y) = \log τ + (l − τy) − 2\,\mathrm{softplus}(l − τy),

  with respect to Lebesgue measure on y ∈ ℝ; finite for logits of ±1e4. The relaxed Bernoulli
  x = σ(y) on (0, 1) has log p(x) = log p(y) − log σ(y) − log σ(−y).

  Args:
    y: logistic values, any shape broadcasting against ``logits``.
    logits: l.
    temperature: τ > 0, a float or a traced scalar.
    event_ndims: how many trailing axes to sum.
  """
  y, logits = _broadcast(y, logits, "binary_concrete_log_prob")
  t = _check_temperature(temperature, "binary_concrete_log_prob").astype(y.dtype)
  a = logits - t * y
  return _reduce(jnp.log(t) + a - 2.0 * jax.nn.softplus(a), event_ndims,
                 "binary_concrete_log_prob")


# -- ExpConcrete / Concrete (relaxed categorical) --------------------------------------------------


def exp_concrete_sample(key, logits: Array, temperature, *, num_samples: int) -> Array:
  r"""y = log softmax((l + G)/τ), G i.i.d. Gumbel(0, 1): ``(K, *logits.shape)``, reparameterized.

  A point on the log-simplex (logsumexp(y) = 0 over the last axis); exp(y) is the Concrete /
  Gumbel-softmax sample and argmax y ~ Categorical(softmax(l)) for every τ (the Gumbel-max
  trick; Maddison et al. 2017, Sec. 3; Jang et al. 2017, Sec. 2).
  """
  _check_num_samples(num_samples, "exp_concrete_sample")
  t = _check_temperature(temperature, "exp_concrete_sample")
  logits = _float(logits)
  if logits.ndim < 1:
    raise ValueError(f"exp_concrete_sample: logits must have a category axis (..., C), got "
                     f"shape {tuple(logits.shape)}")
  gumbel = jax.random.gumbel(key, (num_samples, *logits.shape), logits.dtype)
  return jax.nn.log_softmax((logits + gumbel) / t.astype(logits.dtype), axis=-1)


def exp_concrete_log_prob(y: Array, logits: Array, temperature, *, event_ndims: int = 0) -> Array:
  r"""The ExpConcrete log-density of y on the log-simplex (Maddison et al. 2017, App. C).

  .. math::
     \log p(y) = \log Γ(n) + (n − 1)\log τ + \sum_{k=1}^n (l_k − τ y_k)
        − n \,\mathrm{logsumexp}_k(l_k − τ y_k),

  n the number of categories. The density is with respect to the symmetric measure
  dx / Π_k x_k of x = exp(y) on the simplex (for n = 2 it equals the Binary Concrete density of
  y_1 − y_2 with logits l_1 − l_2), so the Concrete density of x on the simplex (Lebesgue measure
  on x_1…x_{n−1}) is ``exp_concrete_log_prob(log x) − Σ_k log x_k`` (:func:`concrete_log_prob`).
  A ratio q(y)/p(y) of two such densities does not depend on the measure.

  Args:
    y: log-simplex points ``(..., n)`` broadcasting against ``logits``.
    logits: l ``(..., n)``.
    temperature: τ > 0, a float or a traced scalar.
    event_ndims: how many trailing *variable* axes (after the category axis) to sum.
  Returns:
    The broadcast shape without the category axis and its last ``event_ndims`` axes.
  """
  y, logits = _broadcast(y, logits, "exp_concrete_log_prob", categorical=True)
  t = _check_temperature(temperature, "exp_concrete_log_prob").astype(y.dtype)
  n = logits.shape[-1]
  a = logits - t * y
  per = (math.lgamma(n) + (n - 1) * jnp.log(t) + jnp.sum(a, axis=-1)
         - n * jax.nn.logsumexp(a, axis=-1))
  return _reduce(per, event_ndims, "exp_concrete_log_prob")


def concrete_log_prob(x_simplex: Array, logits: Array, temperature, *,
                      event_ndims: int = 0) -> Array:
  r"""The Concrete log-density of x on the simplex (Maddison et al. 2017, Def. 1).

  .. math::
     \log p(x) = \log Γ(n) + (n − 1)\log τ + \sum_{k=1}^n \big(l_k − (τ + 1)\log x_k\big)
        − n \,\mathrm{logsumexp}_k(l_k − τ \log x_k),

  with respect to Lebesgue measure on (x_1, …, x_{n−1}); equal to
  ``exp_concrete_log_prob(log x) − Σ_k log x_k`` (change of variables). Meant for checks: in a
  model use the ExpConcrete density in log space, which stays finite where x_k underflows.

  Args:
    x_simplex: points of the open simplex ``(..., n)``.
    logits: l ``(..., n)``.
    temperature: τ > 0.
    event_ndims: how many trailing variable axes to sum.
  """
  x, logits = _broadcast(x_simplex, logits, "concrete_log_prob", categorical=True)
  t = _check_temperature(temperature, "concrete_log_prob").astype(x.dtype)
  n = logits.shape[-1]
  log_x = jnp.log(x)
  per = (math.lgamma(n) + (n - 1) * jnp.log(t) + jnp.sum(logits - (t + 1.0) * log_x, axis=-1)
         - n * jax.nn.logsumexp(logits - t * log_x, axis=-1))
  return _reduce(per, event_ndims, "concrete_log_prob")


# -- straight-through ----------------------------------------------------------------------------


def straight_through(hard: Array, soft: Array) -> Array:
  r"""``soft + stop_gradient(hard − soft)``: the value of ``hard``, the gradient of ``soft``.

  The straight-through estimator (Bengio et al. 2013; "ST Gumbel-softmax" in Jang et al. 2017):
  the forward pass uses the discrete value, the backward pass pretends ∂hard/∂soft = I. It is a
  *biased* gradient estimator of the discrete objective (the function of the hard value is not
  differentiated where it is evaluated), useful in practice, never unbiased.
  """
  hard, soft = jnp.asarray(hard), jnp.asarray(soft)
  if hard.shape != soft.shape:
    raise ValueError(f"straight_through: expected hard and soft of the same shape, got "
                     f"{tuple(hard.shape)} and {tuple(soft.shape)}")
  return soft + jax.lax.stop_gradient(hard.astype(soft.dtype) - soft)


def hard_bernoulli(y_logit: Array) -> Array:
  """1[y > 0] as floats: the Bernoulli value of a Binary Concrete sample in logit space."""
  y = _float(y_logit)
  return (y > 0).astype(y.dtype)


def hard_categorical(y: Array) -> Array:
  """one_hot(argmax_k y_k) over the last axis, as floats: the category of a (log-)simplex point."""
  y = _float(y)
  if y.ndim < 1:
    raise ValueError(f"hard_categorical: expected a category axis (..., C), got shape "
                     f"{tuple(y.shape)}")
  return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=y.dtype)
