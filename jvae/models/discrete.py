r"""Discrete-latent models: discrete and relaxed VAEs, sigmoid belief nets, a mixed VAE (layer 3).

All three meet :class:`jvae.LatentModel`. A site that is sampled discretely is *not*
reparameterized: its sample is stopped, and the proposal carries ``log_q_score``, log q of those
sites at live ``params``, which makes the objectives use a score-function estimator
(``estimator="score"`` / ``"vimco"``; Williams 1992, Mnih & Gregor 2014, Mnih & Rezende 2016).
Relaxed sites (Concrete / Gumbel-softmax) are reparameterized and need no score term.

* :class:`DiscreteVAE`: Bernoulli or categorical latents with an MLP encoder and decoder, sampled
  exactly (score function) or relaxed (Maddison et al. 2017; Jang et al. 2017) with or without
  the straight-through trick.
* :class:`SigmoidBeliefNet`: L layers of binary units with linear-sigmoid conditionals, the
  benchmark of NVIL and VIMCO (Neal 1992; Mnih & Gregor 2014; Mnih & Rezende 2016).
* :class:`MixedVAE`: a categorical latent d and a Gaussian latent z|d (Kingma et al. 2014's M2
  with d latent; Dupont 2018's joint VAE without the relaxation); only d is scored.

Shapes: x ``(batch, *event)``; every latent leaf ``(K, batch, ...)``, sample axis first, also for
K = 1; ``log_q``, ``log_q_score``, ``log_lik`` and ``log_prior`` ``(K, batch)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import bernoulli_log_prob as _bernoulli_lik
from jvae.bounds.numerics import check_number, gaussian_kl, softplus_scale
from jvae.distributions.discrete import (
    bernoulli_kl,
    bernoulli_log_prob,
    binary_concrete_log_prob,
    binary_concrete_sample,
    categorical_kl,
    categorical_log_prob,
    exp_concrete_log_prob,
    exp_concrete_sample,
    hard_bernoulli,
    hard_categorical,
    sample_bernoulli,
    sample_categorical,
    straight_through,
)
from jvae.models.contract import Joint, Proposal, data_of
from jvae.models.networks import MLP

Array = jax.Array

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}
_RELAXATIONS = (None, "concrete", "straight_through")
_LATENTS = ("bernoulli", "categorical")


# -- shared checks -------------------------------------------------------------------------------


def _activation(activation, owner: str) -> Callable[[Array], Array]:
  if callable(activation):
    return activation
  if activation not in _ACTIVATIONS:
    raise ValueError(f"{owner} activation: expected a callable or one of "
                     f"{sorted(_ACTIVATIONS)}, got {activation!r}")
  return _ACTIVATIONS[activation]


def _check_size(value, what: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{what}: expected an integer >= {minimum}, got {value!r}")
  return value


def _check_widths(widths, what: str) -> tuple[int, ...]:
  try:
    widths = tuple(widths)
  except TypeError:
    raise ValueError(f"{what}: expected a sequence of layer widths, got {widths!r}") from None
  for w in widths:
    _check_size(w, what)
  return widths


def _check_num_samples(num_samples) -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
  return num_samples


def _check_x(x, event_shape: tuple[int, ...], owner: str) -> None:
  """Raise at trace time unless x is a float array ``(batch, *event_shape)``."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"x must be an array of shape (batch, *event), got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
  if x.ndim != 1 + len(event_shape) or tuple(x.shape[1:]) != event_shape:
    raise ValueError(f"x must have shape (batch, {', '.join(map(str, event_shape))}) for this "
                     f"{owner} (event shape {event_shape}), got {tuple(x.shape)}")


def _check_leaf(z, expected: tuple, what: str) -> None:
  """``z`` must have shape ``expected`` (None entries free) and rank ``len(expected)``."""
  shape = tuple(getattr(z, "shape", ()))
  if getattr(z, "ndim", None) != len(expected) or any(
      e is not None and s != e for s, e in zip(shape, expected, strict=True)):
    shown = ", ".join("K" if i == 0 and e is None else str(e) for i, e in enumerate(expected))
    raise ValueError(f"{what} must have shape ({shown}) as propose returns it, got {shape}")


def _log_lik(logits: Array, x: Array) -> Array:
  """Σ over the event of log Bernoulli(x | σ(logits)): ``(K, batch)`` (stable, NaN off [0, 1])."""
  event_axes = tuple(range(-(x.ndim - 1), 0))
  return jnp.sum(_bernoulli_lik(logits, x), axis=event_axes)


def _gaussian_log_prob(z: Array, loc: Array, scale: Array) -> Array:
  """Per-dimension log N(z; μ, σ²)."""
  return (-0.5 * jnp.square((z - loc) / scale) - jnp.log(scale)
          - 0.5 * math.log(2 * math.pi))


class _LogitNet(nn.Module):
  """h ``(..., d_in)`` → logits ``(..., features)``: Dense, or tanh-MLP((hidden,)) then Dense."""

  features: int
  hidden: int | None = None

  @nn.compact
  def __call__(self, h: Array) -> Array:
    if self.hidden is not None:
      h = MLP((self.hidden,), nn.tanh, name="mlp")(h)
    return nn.Dense(self.features, name="logits")(h)


# -- DiscreteVAE ---------------------------------------------------------------------------------


class DiscreteVAE(nn.Module):
  r"""A VAE with discrete latents: exact (score-function) or relaxed (Concrete, straight-through).

  The model: D latent variables, each Bernoulli (``latent="bernoulli"``, z ``(K, B, D)`` in
  {0, 1}) or categorical with C categories (``latent="categorical"``, z one-hot
  ``(K, B, D, C)``); p(z) factorized with fixed uniform logits (0) or learned ones
  (``learn_prior``); p(x|z) = Π_i Bernoulli(x_i | σ(f_θ(z))) with an MLP f_θ; q(z|x) factorized
  with logits g_φ(x) from an MLP.

  ``relaxation=None``: z is drawn exactly and stopped. ``log_q`` is log q(z|x) at
  ``density_params`` (default params), ``log_q_score`` the same at live params (the score
  function's term), ``kl`` / ``kl_groups`` the closed-form KL(q ‖ p) (sum and per latent
  variable; exact, q and p being factorized), ``log_q_groups`` / ``log_prior_groups`` per latent
  variable.

  ``relaxation="concrete"`` (Maddison et al. 2017; Jang et al. 2017): z is the relaxed variable y,
  reparameterized, in logit space for Bernoulli latents (y = (l + L)/τ, the decoder sees σ(y)) and
  on the log-simplex for categorical ones (y = log softmax((l + G)/τ), the decoder sees exp(y)).
  ``log_q`` is the relaxed density of y under q (temperature τ), ``log_prior`` that under the
  prior's logits at ``prior_temperature`` λ (Binary Concrete / ExpConcrete densities,
  :mod:`jvae.distributions.discrete`); ``log_q_score`` is None. With ``kl="sample"`` the ELBO
  E_q[log p(x|σ(y)) + log p_λ(y) − log q_τ(y)] is a true lower bound of the *relaxed* model's log
  p(x) (Maddison et al. 2017, Sec. 5). With ``discrete_kl=True``, ``kl`` / ``kl_groups`` hold the
  *discrete* closed-form KL of the underlying Bernoulli/categorical q and p: with ``kl="analytic"``
  the objective becomes Jang et al.'s, relaxed reconstruction − discrete KL, which is not a bound of
  the relaxed model (nor of the discrete one) but tends to the discrete ELBO as τ → 0. The relaxed
  bound with ``kl="sample"`` tends instead to E_q[log p(x|z)] − KL(q_y ‖ p_y), and as hard(y) ~
  Bernoulli(σ(l)) under q and Bernoulli(σ(l_p)) under p for every temperature, the data-processing
  inequality gives KL(q_y ‖ p_y) ≥ KL(q_z ‖ p_z): that limit is ≤ the discrete ELBO. (For τ = λ the
  relaxed KL does not depend on τ at all.)

  ``relaxation="straight_through"``: as ``"concrete"``, but the decoder sees the hard value
  1[y > 0] (or one_hot(argmax y)) with the gradient of the soft one (:func:`straight_through`).
  The gradient is *biased*. Its value with ``kl="sample"`` is a lower bound of the discrete
  model's log p(x) (the hard value is distributed exactly as the discrete z, and the relaxed KL
  is the larger), and with ``kl="analytic"`` an unbiased estimate of the discrete ELBO.

  Attributes:
    event_shape: the shape of one x, e.g. ``(784,)``.
    num_latents: D, the number of latent variables.
    latent: ``"bernoulli"`` or ``"categorical"``.
    num_categories: C ≥ 2 for ``latent="categorical"`` (ignored for Bernoulli latents).
    hidden: widths of the encoder's MLP; the decoder's are the reverse.
    activation: ``"tanh"``, ``"relu"`` or a callable.
    learn_prior: learn the prior's logits (initialized uniform) instead of fixing them at 0.
    relaxation: None, ``"concrete"`` or ``"straight_through"``.
    temperature: τ > 0 of the relaxed q (a float, or a traced scalar via :meth:`at_temperature`).
    prior_temperature: λ > 0 of the relaxed prior; None: the same as ``temperature``.
    discrete_kl: with a relaxation, return the discrete closed-form KL as ``Proposal.kl`` so
      that ``kl="analytic"`` gives Jang et al.'s objective. Off by default: that objective is not
      a bound, so a relaxed model's ``kl="analytic"`` is an error unless asked for by name, and
      ``kl="sample"`` (the relaxed bound) is the one to use.

  Raises:
    ValueError: for an unknown ``latent``/``relaxation``/``activation``, non-positive sizes, or a
      static temperature that is not a finite number > 0.
  """

  event_shape: Sequence[int]
  num_latents: int = 200
  latent: str = "bernoulli"
  num_categories: int = 10
  hidden: Sequence[int] = (200,)
  activation: str | Callable[[Array], Array] = "tanh"
  learn_prior: bool = False
  relaxation: str | None = None
  temperature: float | Array = 1.0
  prior_temperature: float | Array | None = None
  discrete_kl: bool = False

  def __post_init__(self):
    _check_widths(self.event_shape, "DiscreteVAE event_shape")
    _check_size(self.num_latents, "DiscreteVAE num_latents")
    if self.latent not in _LATENTS:
      raise ValueError(f"DiscreteVAE latent: expected one of {_LATENTS}, got {self.latent!r}")
    if self.latent == "categorical":
      _check_size(self.num_categories, "DiscreteVAE num_categories", 2)
    _check_widths(self.hidden, "DiscreteVAE hidden")
    _activation(self.activation, "DiscreteVAE")
    if self.relaxation not in _RELAXATIONS:
      raise ValueError(f"DiscreteVAE relaxation: expected one of {_RELAXATIONS}, got "
                       f"{self.relaxation!r}")
    check_number(self.temperature, "DiscreteVAE temperature", minimum=0.0, strict=True)
    if self.prior_temperature is not None:
      check_number(self.prior_temperature, "DiscreteVAE prior_temperature", minimum=0.0,
                   strict=True)
    super().__post_init__()

  def setup(self):
    act = _activation(self.activation, "DiscreteVAE")
    self.encoder_net = MLP(tuple(self.hidden), act)
    self.encoder_logits = nn.Dense(math.prod(self.latent_shape))
    self.decoder_net = MLP(tuple(reversed(tuple(self.hidden))), act)
    self.decoder_logits = nn.Dense(math.prod(self.event_shape))
    if self.learn_prior:
      self.learned_prior_logits = self.param("prior_logits", nn.initializers.zeros,
                                             self.latent_shape)

  def __call__(self, batch):
    """Initialisation path: q's logits and p(x|z)'s logits at z = 0; every parameter once."""
    x = data_of(batch)
    logits = self.encode(x)
    self.prior_logits()
    return logits, self.decode(jnp.zeros_like(logits))

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """The shape of one example's latent: ``(D,)``, or ``(D, C)`` for categorical latents."""
    if self.latent == "categorical":
      return (self.num_latents, self.num_categories)
    return (self.num_latents,)

  @property
  def temperatures(self) -> tuple:
    """(τ, λ): the temperatures of the relaxed q and of the relaxed prior."""
    t = self.temperature
    return t, t if self.prior_temperature is None else self.prior_temperature

  def encode(self, x: Array) -> Array:
    """q's logits for x ``(batch, *event)``: ``(batch, D)`` or ``(batch, D, C)``."""
    _check_x(x, tuple(self.event_shape), "DiscreteVAE")
    h = self.encoder_net(x.reshape(x.shape[0], -1))
    return self.encoder_logits(h).reshape(x.shape[0], *self.latent_shape)

  def decode(self, z: Array) -> Array:
    """p(x|z)'s logits for decoder inputs ``(..., *latent_shape)``: ``(..., *event)``."""
    lead = z.shape[:z.ndim - len(self.latent_shape)]
    h = self.decoder_net(z.reshape(*lead, math.prod(self.latent_shape)))
    return self.decoder_logits(h).reshape(*lead, *self.event_shape)

  def prior_logits(self) -> Array:
    """p(z)'s logits ``latent_shape``: learned, or 0 (uniform)."""
    if self.learn_prior:
      return self.learned_prior_logits
    return jnp.zeros(self.latent_shape, jnp.float32)

  @nn.nowrap
  def at_temperature(self, temperature) -> DiscreteVAE:
    """A copy with temperature τ (a float or a traced scalar); a None prior temperature follows.

    The trainer anneals τ through this method: ``model.at_temperature(t).propose(...)`` inside
    a jitted step with t an argument recompiles nothing.
    """
    return self.clone(temperature=temperature)

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z ~ q(z|x), ``(K, B, D)`` or ``(K, B, D, C)``; log q and groups per latent variable.

    Returns:
      ``Proposal(z, log_q, log_q_groups (K, B, D), kl (B,), kl_groups (B, D), log_q_score)``;
      ``log_q_score`` ``(K, B)`` when ``relaxation`` is None, else None (class docstring).
    """
    _check_num_samples(num_samples)
    x = data_of(batch)
    logits, prior_logits = self.apply(params, x, method=DiscreteVAE._logits)
    d_logits = logits if density_params is None else self.apply(
        density_params, x, method=DiscreteVAE.encode)
    categorical = self.latent == "categorical"
    kl_groups = (categorical_kl if categorical else bernoulli_kl)(logits, prior_logits)
    tau, _ = self.temperatures
    score = None
    if self.relaxation is None:
      sample = sample_categorical if categorical else sample_bernoulli
      z = sample(key, logits, num_samples=num_samples)
      log_prob = categorical_log_prob if categorical else bernoulli_log_prob
      groups = log_prob(z, d_logits)
      score = groups if density_params is None else log_prob(z, logits)
      score = jnp.sum(score, axis=-1)
    else:
      sample = exp_concrete_sample if categorical else binary_concrete_sample
      z = sample(key, logits, tau, num_samples=num_samples)
      log_prob = exp_concrete_log_prob if categorical else binary_concrete_log_prob
      groups = log_prob(z, d_logits, tau)
    if self.relaxation is not None and not self.discrete_kl:
      return Proposal(z, jnp.sum(groups, axis=-1), groups, log_q_score=score)
    return Proposal(z, jnp.sum(groups, axis=-1), groups, jnp.sum(kl_groups, axis=-1), kl_groups,
                    score)

  @nn.nowrap
  def log_joint(self, params, batch, z: Array) -> Joint:
    """log p(x|z) and log p(z) ``(K, B)``, with ``log_prior_groups`` ``(K, B, D)``.

    Args:
      z: ``(K, B, D)`` (Bernoulli) or ``(K, B, D, C)`` (categorical), as :meth:`propose`
        returns it: discrete values, or the relaxed variable y for a relaxed model.
    """
    x = data_of(batch)
    _check_leaf(z, (None, x.shape[0], *self.latent_shape), "z")
    return self.apply(params, x, z, method=DiscreteVAE._log_joint)

  def _logits(self, x: Array):
    return self.encode(x), self.prior_logits()

  def _decoder_input(self, z: Array) -> Array:
    categorical = self.latent == "categorical"
    if self.relaxation is None:
      return z
    soft = jnp.exp(z) if categorical else jax.nn.sigmoid(z)
    if self.relaxation == "concrete":
      return soft
    return straight_through(hard_categorical(z) if categorical else hard_bernoulli(z), soft)

  def _log_joint(self, x: Array, z: Array) -> Joint:
    _check_x(x, tuple(self.event_shape), "DiscreteVAE")
    log_lik = _log_lik(self.decode(self._decoder_input(z)), x)
    prior_logits = self.prior_logits()
    categorical = self.latent == "categorical"
    if self.relaxation is None:
      groups = (categorical_log_prob if categorical else bernoulli_log_prob)(z, prior_logits)
    else:
      _, lam = self.temperatures
      groups = (exp_concrete_log_prob if categorical else binary_concrete_log_prob)(
          z, prior_logits, lam)
    return Joint(log_lik, jnp.sum(groups, axis=-1), groups)

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|z) (or its mean) for ``num`` draws z ~ p(z) (relaxed at λ if the model is):
    ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=DiscreteVAE._generate)

  def _generate(self, key, num: int, mean: bool):
    z_key, x_key = jax.random.split(key)
    prior_logits = self.prior_logits()
    categorical = self.latent == "categorical"
    _, lam = self.temperatures
    if self.relaxation is None:
      z = (sample_categorical if categorical else sample_bernoulli)(
          z_key, prior_logits, num_samples=num)
    else:
      z = (exp_concrete_sample if categorical else binary_concrete_sample)(
          z_key, prior_logits, lam, num_samples=num)
    logits = self.decode(self._decoder_input(z))
    if mean:
      return jax.nn.sigmoid(logits)
    return jax.random.bernoulli(x_key, jax.nn.sigmoid(logits)).astype(logits.dtype)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|z) at one z ~ q(z|x) per example: ``(batch, *event)``."""
    z = self.propose(params, key, batch, num_samples=1).z[0]
    return self.apply(params, z, method=lambda m, z: jax.nn.sigmoid(
        m.decode(m._decoder_input(z))))


# -- SigmoidBeliefNet ----------------------------------------------------------------------------


class SigmoidBeliefNet(nn.Module):
  r"""A sigmoid belief network with L binary stochastic layers (Neal 1992; Mnih & Gregor 2014).

  Generative model, top-down, every conditional linear-sigmoid (a Dense layer giving logits):

  .. math::
     p(h_L) = \prod_j \mathrm{Bern}(σ(b_j)),\quad
     p(h_l|h_{l+1}) = \prod_j \mathrm{Bern}(σ(W_l h_{l+1} + b_l)_j),\quad
     p(x|h_1) = \prod_i \mathrm{Bern}(σ(W_0 h_1 + b_0)_i),

  with learned top logits b; inference network, bottom-up,
  q(h_1|x) q(h_2|h_1) ⋯ q(h_L|h_{L−1}), each linear-sigmoid as well. All sites are discrete: the
  samples are stopped and ``log_q_score`` is the total log q at live params. This is the
  benchmark model of NVIL (Mnih & Gregor 2014, ``layers=(200,)`` and ``(200, 200, 200)``) and of
  VIMCO (Mnih & Rezende 2016). With ``hidden=n`` every conditional is instead a one-hidden-layer
  tanh MLP of width n followed by the logits (Mnih & Gregor's non-linear variant).

  Latents: a tuple ``z = (h_1, …, h_L)``, each ``(K, B, d_l)`` in {0, 1}. ``log_q_groups`` and
  ``log_prior_groups`` are per layer, ``(K, B, L)``, l = 1…L. With L = 1 the proposal also has
  the closed-form ``kl`` (and ``kl_groups`` ``(B, 1)``); deeper nets have none (the KL of the
  whole hierarchy has no closed form).

  Attributes:
    event_shape: the shape of one x.
    layers: (d_1, …, d_L), bottom to top.
    hidden: None for linear conditionals, or the width of one tanh hidden layer in each.
  """

  event_shape: Sequence[int]
  layers: Sequence[int] = (200,)
  hidden: int | None = None

  def __post_init__(self):
    _check_widths(self.event_shape, "SigmoidBeliefNet event_shape")
    if len(_check_widths(self.layers, "SigmoidBeliefNet layers")) < 1:
      raise ValueError("SigmoidBeliefNet layers: expected at least one stochastic layer, got ()")
    if self.hidden is not None:
      _check_size(self.hidden, "SigmoidBeliefNet hidden")
    super().__post_init__()

  def setup(self):
    sizes = tuple(self.layers)
    # q(h_1|x), q(h_2|h_1), …
    self.inference = [_LogitNet(d, self.hidden) for d in sizes]
    # p(x|h_1), p(h_1|h_2), …, p(h_{L−1}|h_L)
    self.generative = [_LogitNet(math.prod(self.event_shape), self.hidden)] + [
        _LogitNet(d, self.hidden) for d in sizes[:-1]]
    self.top_logits = self.param("prior_logits", nn.initializers.zeros, (sizes[-1],))

  def __call__(self, batch):
    """Initialisation path: every conditional once at h = 0; returns p(x|h_1 = 0)'s logits."""
    x = data_of(batch)
    _check_x(x, tuple(self.event_shape), "SigmoidBeliefNet")
    h = x.reshape(x.shape[0], -1)
    zs = []
    for net in self.inference:
      zs.append(jnp.zeros_like(net(h)))
      h = zs[-1]
    for net, h in zip(self.generative[1:], zs[1:], strict=True):
      net(h)
    return self._x_logits(zs[0])

  @property
  def num_layers(self) -> int:
    """L, the number of stochastic layers."""
    return len(tuple(self.layers))

  def _x_logits(self, h1: Array) -> Array:
    return self.generative[0](h1).reshape(*h1.shape[:-1], *self.event_shape)

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """h ~ q(h_1|x) q(h_2|h_1) ⋯ ancestrally, stopped; log q per layer and ``log_q_score``.

    Returns:
      ``Proposal(z, log_q, log_q_groups (K, B, L), kl, kl_groups, log_q_score (K, B))``, ``kl``
      ``(B,)`` and ``kl_groups`` ``(B, 1)`` only for L = 1.
    """
    _check_num_samples(num_samples)
    x = data_of(batch)
    zs, live, kl = self.apply(params, x, key, num_samples, method=SigmoidBeliefNet._sample)
    groups = live if density_params is None else self.apply(
        density_params, x, zs, method=SigmoidBeliefNet._log_q)
    kl_groups = None if kl is None else kl[:, None]
    return Proposal(zs, jnp.sum(groups, -1), groups, kl, kl_groups, jnp.sum(live, -1))

  @nn.nowrap
  def log_joint(self, params, batch, z) -> Joint:
    """log p(x|h_1) and log p(h) = Σ_l log p(h_l|h_{l+1}) ``(K, B)``, groups ``(K, B, L)``.

    Args:
      z: a tuple ``(h_1, …, h_L)`` as :meth:`propose` returns it, each ``(K, B, d_l)``.
    """
    x = data_of(batch)
    self._check_latents(z, x.shape[0])
    return self.apply(params, x, tuple(z), method=SigmoidBeliefNet._log_joint)

  def _check_latents(self, z, batch: int) -> None:
    sizes = tuple(self.layers)
    if not isinstance(z, tuple | list) or len(z) != len(sizes):
      raise ValueError(f"z must be a tuple (h_1, ..., h_L) of {len(sizes)} arrays as propose "
                       f"returns it, got {type(z).__name__}"
                       + (f" of length {len(z)}" if isinstance(z, tuple | list) else ""))
    k = getattr(z[0], "shape", (None,))[0]
    for i, (h, d) in enumerate(zip(z, sizes, strict=True), start=1):
      _check_leaf(h, (k, batch, d) if i > 1 else (None, batch, d), f"h_{i}")

  def _sample(self, x: Array, key, num_samples: int):
    _check_x(x, tuple(self.event_shape), "SigmoidBeliefNet")
    keys = jax.random.split(key, self.num_layers)
    logits = self.inference[0](x.reshape(x.shape[0], -1))
    h = sample_bernoulli(keys[0], logits, num_samples=num_samples)
    zs, log_qs = [h], [bernoulli_log_prob(h, logits, event_ndims=1)]
    for net, k in zip(self.inference[1:], keys[1:], strict=True):
      logits_l = net(zs[-1])
      h = sample_bernoulli(k, logits_l, num_samples=1)[0]
      zs.append(h)
      log_qs.append(bernoulli_log_prob(h, logits_l, event_ndims=1))
    kl = None
    if self.num_layers == 1:
      kl = jnp.sum(bernoulli_kl(logits, self.top_logits), axis=-1)
    return tuple(zs), jnp.stack(log_qs, -1), kl

  def _log_q(self, x: Array, zs) -> Array:
    _check_x(x, tuple(self.event_shape), "SigmoidBeliefNet")
    inputs = [x.reshape(x.shape[0], -1), *zs[:-1]]
    return jnp.stack([bernoulli_log_prob(h, net(inp), event_ndims=1)
                      for net, inp, h in zip(self.inference, inputs, zs, strict=True)], -1)

  def _log_joint(self, x: Array, zs) -> Joint:
    _check_x(x, tuple(self.event_shape), "SigmoidBeliefNet")
    log_lik = _log_lik(self._x_logits(zs[0]), x)
    log_ps = [bernoulli_log_prob(zs[i - 1], self.generative[i](zs[i]), event_ndims=1)
              for i in range(1, self.num_layers)]
    log_ps.append(bernoulli_log_prob(zs[-1], self.top_logits, event_ndims=1))
    groups = jnp.stack(log_ps, -1)
    return Joint(log_lik, jnp.sum(groups, -1), groups)

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|h_1) (or its mean), h drawn ancestrally from p(h_L) down: ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=SigmoidBeliefNet._generate)

  def _generate(self, key, num: int, mean: bool):
    keys = jax.random.split(key, self.num_layers + 1)
    h = sample_bernoulli(keys[0], self.top_logits, num_samples=num)
    for i, k in zip(range(self.num_layers - 1, 0, -1), keys[1:-1], strict=True):
      h = sample_bernoulli(k, self.generative[i](h), num_samples=1)[0]
    p = jax.nn.sigmoid(self._x_logits(h))
    return p if mean else jax.random.bernoulli(keys[-1], p).astype(p.dtype)


# -- MixedVAE ------------------------------------------------------------------------------------


class MixedVAE(nn.Module):
  r"""A VAE with a categorical latent d and a Gaussian latent z: only d needs the score function.

  .. math::
     p(d) = \mathrm{Cat}(1/C),\quad p(z) = N(0, I),\quad
     p(x|z, d) = \prod_i \mathrm{Bern}(σ(f_θ(z, d))_i),\\
     q(d|x) = \mathrm{Cat}(\mathrm{softmax}(g_φ(x))),\quad
     q(z|x, d) = N(μ_φ(x, d), \mathrm{diag}\,σ_φ(x, d)^2),\ σ = \mathrm{softplus}(·) + σ_{min}.

  d is drawn exactly and stopped; z = μ + σ ε is reparameterized given d. ``log_q`` is
  log q(d|x) + log q(z|x, d) at ``density_params``; ``log_q_score`` is log q(d|x) *only*, at live
  params: the continuous site keeps its pathwise gradient (z depends on d, but d is stopped), so
  the score term is f · ∇ log q(d|x) (Proposal docstring). The closed-form KL of the whole q
  exists by summing over the C values of d,

  .. math::
     \mathrm{KL}(q(d, z|x) ‖ p(d) p(z)) = \mathrm{KL}(q(d|x) ‖ p(d))
        + \sum_c q(c|x)\, \mathrm{KL}(q(z|x, c) ‖ N(0, I)),

  returned as ``kl`` with ``kl_groups`` ``(B, 1 + latent_dim)``: the discrete KL, then the
  expected Gaussian KL per dimension, matching ``log_q_groups`` / ``log_prior_groups``
  ``(K, B, 1 + latent_dim)``.

  Latents: a dict ``{"d": (K, B, C) one-hot, "z": (K, B, latent_dim)}``.

  Attributes:
    event_shape: the shape of one x.
    num_categories: C ≥ 2.
    latent_dim: the size of z.
    hidden: widths of the encoder's MLP on x (its output feeds both q(d|x) and q(z|x, d)); the
      decoder's MLP on (z, d) has the reverse widths.
    activation: ``"tanh"``, ``"relu"`` or a callable.
    min_scale: σ_min > 0, the floor on q(z|x, d)'s scale.
  """

  event_shape: Sequence[int]
  num_categories: int = 10
  latent_dim: int = 20
  hidden: Sequence[int] = (200,)
  activation: str | Callable[[Array], Array] = "tanh"
  min_scale: float = 1e-4

  def __post_init__(self):
    _check_widths(self.event_shape, "MixedVAE event_shape")
    _check_size(self.num_categories, "MixedVAE num_categories", 2)
    _check_size(self.latent_dim, "MixedVAE latent_dim")
    _check_widths(self.hidden, "MixedVAE hidden")
    _activation(self.activation, "MixedVAE")
    check_number(self.min_scale, "MixedVAE min_scale", minimum=0.0, strict=True)
    super().__post_init__()

  def setup(self):
    act = _activation(self.activation, "MixedVAE")
    self.encoder_net = MLP(tuple(self.hidden), act)
    self.d_logits = nn.Dense(self.num_categories)
    self.z_loc = nn.Dense(self.latent_dim)
    self.z_scale = nn.Dense(self.latent_dim)
    self.decoder_net = MLP(tuple(reversed(tuple(self.hidden))), act)
    self.decoder_logits = nn.Dense(math.prod(self.event_shape))

  def __call__(self, batch):
    """Initialisation path: q(d|x), q(z|x, d) and p(x|z, d) at d = category 0, z = 0."""
    x = data_of(batch)
    h, _ = self.encode(x)
    d = jax.nn.one_hot(jnp.zeros(x.shape[0], jnp.int32), self.num_categories, dtype=h.dtype)
    loc, _ = self.q_z(h, d)
    return self.decode(jnp.zeros_like(loc), d)

  def encode(self, x: Array):
    """Features h ``(B, H)`` and q(d|x)'s logits ``(B, C)`` for x ``(B, *event)``."""
    _check_x(x, tuple(self.event_shape), "MixedVAE")
    h = self.encoder_net(x.reshape(x.shape[0], -1))
    return h, self.d_logits(h)

  def q_z(self, h: Array, d: Array):
    """q(z|x, d)'s loc and scale ``(..., B, latent_dim)`` from h ``(B, H)``, d ``(..., B, C)``."""
    inp = jnp.concatenate([jnp.broadcast_to(h, (*d.shape[:-1], h.shape[-1])), d], -1)
    return self.z_loc(inp), softplus_scale(self.z_scale(inp), self.min_scale)

  def decode(self, z: Array, d: Array) -> Array:
    """p(x|z, d)'s logits ``(..., *event)`` for z ``(..., latent_dim)``, d ``(..., C)``."""
    h = self.decoder_net(jnp.concatenate([z, d], -1))
    return self.decoder_logits(h).reshape(*z.shape[:-1], *self.event_shape)

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """d ~ q(d|x) (stopped), z ~ q(z|x, d) (reparameterized); log q and its groups.

    Returns:
      ``Proposal({"d", "z"}, log_q, log_q_groups (K, B, 1 + latent_dim), kl (B,),
      kl_groups (B, 1 + latent_dim), log_q_score (K, B) = log q(d|x) at live params)``.
    """
    _check_num_samples(num_samples)
    x = data_of(batch)
    z, live, kl_groups = self.apply(params, x, key, num_samples, method=MixedVAE._sample)
    groups = live if density_params is None else self.apply(density_params, x, z,
                                                            method=MixedVAE._log_q)
    return Proposal(z, jnp.sum(groups, -1), groups, jnp.sum(kl_groups, -1), kl_groups,
                    live[..., 0])

  @nn.nowrap
  def log_joint(self, params, batch, z) -> Joint:
    """log p(x|z, d) and log p(d) + log p(z) ``(K, B)``, groups ``(K, B, 1 + latent_dim)``.

    Args:
      z: ``{"d": (K, B, C), "z": (K, B, latent_dim)}`` as :meth:`propose` returns it.
    """
    x = data_of(batch)
    self._check_latents(z, x.shape[0])
    return self.apply(params, x, z, method=MixedVAE._log_joint)

  def _check_latents(self, z, batch: int) -> None:
    if not isinstance(z, dict) or set(z) != {"d", "z"}:
      raise ValueError(f"z must be a dict with keys 'd' and 'z' as propose returns it, got "
                       f"{type(z).__name__}" + (f" with keys {sorted(z)}"
                                                 if isinstance(z, dict) else ""))
    _check_leaf(z["d"], (None, batch, self.num_categories), "z['d']")
    _check_leaf(z["z"], (z["d"].shape[0], batch, self.latent_dim), "z['z']")

  def _sample(self, x: Array, key, num_samples: int):
    d_key, z_key = jax.random.split(key)
    h, logits = self.encode(x)
    d = sample_categorical(d_key, logits, num_samples=num_samples)
    loc, scale = self.q_z(h, d)
    z = loc + scale * jax.random.normal(z_key, loc.shape, loc.dtype)
    groups = jnp.concatenate([categorical_log_prob(d, logits)[..., None],
                              _gaussian_log_prob(z, loc, scale)], -1)
    # the closed-form KL, summing over the C values of d
    eye = jnp.eye(self.num_categories, dtype=h.dtype)
    every_d = jnp.broadcast_to(eye[:, None], (self.num_categories, x.shape[0],
                                              self.num_categories))
    loc_c, scale_c = self.q_z(h, every_d)  # (C, B, latent_dim)
    kl_z = gaussian_kl(loc_c, jnp.log(scale_c), 0.0, 0.0)
    pi = jax.nn.softmax(logits, -1)  # (B, C)
    kl_z = jnp.einsum("bc,cbj->bj", pi, kl_z)
    kl_d = categorical_kl(logits, jnp.zeros_like(logits))
    return {"d": d, "z": z}, groups, jnp.concatenate([kl_d[:, None], kl_z], -1)

  def _log_q(self, x: Array, z) -> Array:
    h, logits = self.encode(x)
    loc, scale = self.q_z(h, z["d"])
    return jnp.concatenate([categorical_log_prob(z["d"], logits)[..., None],
                            _gaussian_log_prob(z["z"], loc, scale)], -1)

  def _log_joint(self, x: Array, z) -> Joint:
    _check_x(x, tuple(self.event_shape), "MixedVAE")
    d, zc = z["d"], z["z"]
    log_lik = _log_lik(self.decode(zc, d), x)
    uniform = jnp.zeros((self.num_categories,), d.dtype)
    groups = jnp.concatenate([categorical_log_prob(d, uniform)[..., None],
                              _gaussian_log_prob(zc, 0.0, 1.0)], -1)
    return Joint(log_lik, jnp.sum(groups, -1), groups)

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|z, d) (or its mean) for ``num`` draws d ~ p(d), z ~ N(0, I): ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=MixedVAE._generate)

  def _generate(self, key, num: int, mean: bool):
    d_key, z_key, x_key = jax.random.split(key, 3)
    d = sample_categorical(d_key, jnp.zeros((self.num_categories,)), num_samples=num)
    z = jax.random.normal(z_key, (num, self.latent_dim))
    p = jax.nn.sigmoid(self.decode(z, d))
    return p if mean else jax.random.bernoulli(x_key, p).astype(p.dtype)
