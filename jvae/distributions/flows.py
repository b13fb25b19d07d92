r"""Inverse autoregressive flow (IAF) posteriors (layer 2).

Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved Variational Inference
with Inverse Autoregressive Flow". The encoder emits μ₀, σ₀ and a context vector c; then

.. math::
   z_0 = μ_0 + σ_0 ⊙ ε,\qquad
   z_t = σ_t ⊙ z_{t-1} + (1 − σ_t) ⊙ m_t,\qquad
   [m_t, s_t] = \mathrm{AR}_t(z_{t-1}, c),\quad σ_t = \mathrm{sigmoid}(s_t + b_{\text{forget}}),

where ``AR_t`` is a MADE network (Germain, Gregor, Murray & Larochelle 2015): output i depends
only on the inputs strictly before i in step t's ordering, so ∂z_t/∂z_{t−1} is triangular with
diagonal σ_t and

.. math::
   \log q(z_T|x) = \log N(ε; 0, I) − \sum_i \log σ_{0,i} − \sum_{t=1}^T \sum_i \log σ_{t,i}

(Kingma et al. 2016, Algorithm 1). The ordering is reversed between steps so that
every dimension can eventually depend on every other one.

Everything the bijector needs is a pure function of weight arrays (:func:`made_apply`), so an
:class:`IAFStep` can live inside a :class:`distrax.Transformed`; :class:`IAFPosterior` is the
linen head that owns the weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jvae.bounds.numerics import check_number
from jvae.distributions.posteriors import DEFAULT_MIN_SCALE, GaussianPosterior, check_min_scale

Array = jax.Array

DEFAULT_FORGET_BIAS = 2.0


# ------------------------------------------------------------------------------------------------
# MADE masks and the autoregressive network as pure functions.


def input_degrees(d: int, reverse: bool = False) -> np.ndarray:
  """MADE degrees of the d inputs: the 1-based position of input i in the ordering.

  Natural order gives ``[1, 2, ..., d]``; ``reverse=True`` gives ``[d, ..., 2, 1]`` (the last
  coordinate comes first).
  """
  degrees = np.arange(1, d + 1)
  return degrees[::-1].copy() if reverse else degrees


def made_masks(degrees_in: np.ndarray, hidden_sizes: Sequence[int]) -> tuple[np.ndarray, ...]:
  r"""Connectivity masks of a MADE network (Germain et al. 2015, Sec. 4).

  With input degrees :math:`m^0_j` (``degrees_in``), hidden unit k of layer l gets degree
  :math:`m^l_k ∈ \{1, …, d−1\}` (assigned cyclically, deterministic), and

  .. math::
     M^l_{jk} = [m^l_k ≥ m^{l−1}_j],\qquad M^{\text{out}}_{ki} = [m^0_i > m^L_k],

  so output i (which has the degree of input i) depends only on inputs j with
  :math:`m^0_j < m^0_i`: strictly before i in the ordering. The first output in the ordering is a
  constant (a function of the context only).

  Args:
    degrees_in: shape ``(d,)``, a permutation of ``1..d`` (see :func:`input_degrees`).
    hidden_sizes: widths of the hidden layers, at least one; widths ≥ d − 1 make every allowed
      connection reachable.

  Returns:
    ``len(hidden_sizes) + 1`` float32 masks, shaped ``(fan_in, fan_out)`` like a Dense kernel: input
    → hidden₁, hidden₁ → hidden₂, ..., hidden_L → output (``(hidden_L, d)``, shared by m and s).
  """
  degrees_in = np.asarray(degrees_in)
  if degrees_in.ndim != 1:
    raise ValueError(f"degrees_in must be 1-D, got shape {degrees_in.shape}.")
  if not hidden_sizes:
    raise ValueError("MADE needs at least one hidden layer.")
  d = degrees_in.shape[0]
  max_hidden_degree = max(d - 1, 1)
  masks = []
  prev = degrees_in
  for width in hidden_sizes:
    degrees = np.arange(width) % max_hidden_degree + 1
    masks.append((degrees[None, :] >= prev[:, None]).astype(np.float32))
    prev = degrees
  masks.append((degrees_in[None, :] > prev[:, None]).astype(np.float32))
  return tuple(masks)


def made_apply(
    params: Mapping[str, Array],
    masks: Sequence[Array],
    z: Array,
    context: Array | None = None,
    activation: Callable[[Array], Array] = jax.nn.elu,
) -> tuple[Array, Array]:
  """Evaluates a MADE network with masked Dense layers; returns ``(m, s)``.

  Hidden layer 1 is ``activation(z @ (W ⊙ M₀) + c @ W_c + b)``: the context enters unmasked (the
  extra encoder output h of Kingma et al. 2016, fed to every step), so every output may depend on
  it. Further hidden layers are masked Dense layers, and two masked linear heads emit m and s.

  Args:
    params: ``input_kernel (d, H₁)``, ``input_bias (H₁,)``, ``context_kernel (C, H₁)`` (used
      only if ``context`` is given), ``hidden_{l}_kernel``/``hidden_{l}_bias`` for l = 0..L−2,
      ``m_kernel``/``s_kernel`` ``(H_L, d)`` and ``m_bias``/``s_bias`` ``(d,)``.
    masks: from :func:`made_masks`.
    z: shape ``(..., d)``.
    context: shape ``(..., C)``, batch dims broadcastable against those of ``z`` (e.g. z
      ``(K, batch, d)`` with context ``(batch, C)``), or None.
    activation: hidden nonlinearity (ELU by default).

  Returns:
    m, s, each of shape ``broadcast(z.shape[:-1], context.shape[:-1]) + (d,)``.
  """
  chex.assert_axis_dimension(z, -1, params["input_kernel"].shape[0])
  x = z @ (params["input_kernel"] * masks[0]) + params["input_bias"]
  if context is not None:
    x = x + context @ params["context_kernel"]
  x = activation(x)
  for i, mask in enumerate(masks[1:-1]):
    x = activation(x @ (params[f"hidden_{i}_kernel"] * mask) + params[f"hidden_{i}_bias"])
  m = x @ (params["m_kernel"] * masks[-1]) + params["m_bias"]
  s = x @ (params["s_kernel"] * masks[-1]) + params["s_bias"]
  return m, s


# ------------------------------------------------------------------------------------------------
# The IAF step as a distrax bijector.


class IAFStep(distrax.Bijector):
  r"""One gated IAF step z′ = σ ⊙ z + (1 − σ) ⊙ m, σ = sigmoid(s + b), [m, s] = MADE(z, c).

  This is the numerically stable, LSTM-style form of Kingma et al. (2016, Algorithm 1).
  Because m_i and s_i depend only on z_j before i in the ordering, ∂z′/∂z is triangular (lower for
  the natural order, upper for the reversed one) with diagonal σ, so

  .. math::
     \log|\det ∂z′/∂z| = \sum_i \log σ_i = \sum_i \mathrm{log\_sigmoid}(s_i + b),

  computed with ``log_sigmoid`` (finite for any s). With ``forget_bias`` b ≈ 1–2 and small
  output weights, σ ≈ sigmoid(b) and m ≈ 0 initially: each step only slightly rescales z.

  The forward pass (sampling, ``sample_and_log_prob``) costs one network evaluation. The inverse
  is exact but sequential: z_i = m_i + (z′_i − m_i)(1 + e^{−(s_i + b)}) needs m_i, s_i at the
  *inverted* z_{<i}, so it runs d sweeps of that update (d − 1 in a ``lax.fori_loop``, then a last
  one that also yields the log-determinant); after sweep k the first k coordinates in the ordering
  are exact. That is d network evaluations, d times the cost of the forward pass, and d times its
  activation memory under reverse-mode autodiff; it is only needed for ``log_prob`` of an
  externally given z (e.g. importance weights of samples from another distribution).

  Args:
    params: MADE weights (see :func:`made_apply`).
    masks: from :func:`made_masks` for this step's ordering.
    context: c, shape ``(..., C)``, broadcastable against the batch dims of z; or None.
    forget_bias: b, added to s before the sigmoid.
    activation: MADE hidden nonlinearity.
  """

  def __init__(
      self,
      params: Mapping[str, Array],
      masks: Sequence[Array],
      context: Array | None = None,
      forget_bias: float = DEFAULT_FORGET_BIAS,
      activation: Callable[[Array], Array] = jax.nn.elu,
  ):
    super().__init__(event_ndims_in=1, event_ndims_out=1)
    self.params = dict(params)
    self.masks = tuple(masks)
    self.context = context
    self.forget_bias = forget_bias
    self.activation = activation

  def _gate(self, z: Array) -> tuple[Array, Array]:
    """Returns ``(m, s + b)`` at z."""
    m, s = made_apply(self.params, self.masks, z, self.context, self.activation)
    return m, s + self.forget_bias

  def forward_and_log_det(self, z: Array) -> tuple[Array, Array]:
    m, logit = self._gate(z)
    # 1 − σ = sigmoid(−logit), accurate also when σ is close to 1.
    y = jax.nn.sigmoid(logit) * z + jax.nn.sigmoid(-logit) * m
    chex.assert_equal_shape([y, m])
    return y, jnp.sum(jax.nn.log_sigmoid(logit), axis=-1)

  def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
    d = y.shape[-1]
    batch = y.shape[:-1]
    if self.context is not None:
      batch = jnp.broadcast_shapes(batch, self.context.shape[:-1])
    y = jnp.broadcast_to(y, (*batch, d))

    def sweep(z):
      m, logit = self._gate(z)
      # z = m + (y − m) / σ with 1/σ = 1 + exp(−logit).
      return m + (y - m) * (1.0 + jnp.exp(-logit)), logit

    z = jax.lax.fori_loop(0, d - 1, lambda _, z: sweep(z)[0], y)
    # The last sweep's logits depend only on coordinates that are already exact.
    z, logit = sweep(z)
    return z, -jnp.sum(jax.nn.log_sigmoid(logit), axis=-1)


# ------------------------------------------------------------------------------------------------
# The linen head.


class MADEParams(nn.Module):
  """Declares the weights of one MADE network and returns them as a flat dict for made_apply.

  Hidden kernels use LeCun-normal init (masked at use); the m and s heads are initialised with
  normal(``out_init_scale``) weights and zero biases so the IAF step starts near
  z′ = sigmoid(b) z.

  Attributes:
    latent_dim: d.
    hidden: hidden widths.
    context_dim: C, or 0 for no context.
    out_init_scale: stddev of the m/s kernels at init.
  """

  latent_dim: int
  hidden: Sequence[int]
  context_dim: int = 0
  out_init_scale: float = 1e-2

  @nn.compact
  def __call__(self) -> dict[str, Array]:
    d, hidden = self.latent_dim, tuple(self.hidden)
    if not hidden:
      raise ValueError("MADE needs at least one hidden layer.")
    dense_init = nn.initializers.lecun_normal()
    out_init = nn.initializers.normal(self.out_init_scale)
    zeros = nn.initializers.zeros
    p = {
        "input_kernel": self.param("input_kernel", dense_init, (d, hidden[0])),
        "input_bias": self.param("input_bias", zeros, (hidden[0],)),
    }
    if self.context_dim:
      p["context_kernel"] = self.param("context_kernel", dense_init, (self.context_dim, hidden[0]))
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(hidden)):
      p[f"hidden_{i}_kernel"] = self.param(f"hidden_{i}_kernel", dense_init, (fan_in, fan_out))
      p[f"hidden_{i}_bias"] = self.param(f"hidden_{i}_bias", zeros, (fan_out,))
    for head in ("m", "s"):
      p[f"{head}_kernel"] = self.param(f"{head}_kernel", out_init, (hidden[-1], d))
      p[f"{head}_bias"] = self.param(f"{head}_bias", zeros, (d,))
    return p


class IAFPosterior(nn.Module):
  r"""IAF posterior q(z|x): a factorized Gaussian pushed through ``num_steps`` gated IAF steps.

  The base is exactly :class:`jvae.distributions.posteriors.GaussianPosterior` (submodule
  ``base``, params ``base/loc``, ``base/scale``), so z₀ = μ₀ + σ₀ ⊙ ε; a Dense layer ``context``
  maps the features to c; steps ``step_0 … step_{T−1}`` (:class:`MADEParams`) alternate
  natural/reversed orderings. ``sample_and_log_prob`` returns z = z_T and, in the same forward pass,

  .. math::
     \log q = \log N(ε; 0, I) − \sum_i \log σ_{0,i} − \sum_t \sum_i \log σ_{t,i}

  (Kingma et al. 2016, Algorithm 1). ``log_prob`` of an external z goes through the sequential
  inverse (d network evaluations per step, see :class:`IAFStep`).

  With ``num_steps=0`` the head returns GaussianPosterior's ``MultivariateNormalDiag`` itself (no
  context layer, identical params and values).

  Attributes:
    latent_dim: size d of z.
    num_steps: number T of IAF steps.
    hidden: MADE hidden widths (each ≥ d − 1 for full autoregressive connectivity).
    context_dim: size of the context vector c emitted by the encoder head (0: no context, each
      step is then an unconditional autoregressive map; the dependence on x is only via μ₀, σ₀).
    min_scale: floor on σ₀, a finite number > 0.
    forget_bias: b in σ_t = sigmoid(s_t + b); positive so each step starts near identity; finite.
    out_init_scale: stddev of the final MADE kernels at init (small: the flow starts near the
      scaling z′ = sigmoid(b) z); a finite number >= 0.

  Raises:
    ValueError: when built with a static ``min_scale`` that is not a finite number > 0, or a
      non-finite ``forget_bias`` or ``out_init_scale`` (NaN would make every σ_t NaN).
  """

  latent_dim: int
  num_steps: int = 2
  hidden: Sequence[int] = (128, 128)
  context_dim: int = 32
  min_scale: float = DEFAULT_MIN_SCALE
  forget_bias: float = DEFAULT_FORGET_BIAS
  out_init_scale: float = 1e-2

  def __post_init__(self):
    check_min_scale(self.min_scale, "IAFPosterior")
    check_number(self.forget_bias, "IAFPosterior forget_bias")
    check_number(self.out_init_scale, "IAFPosterior out_init_scale", minimum=0.0)
    super().__post_init__()

  @nn.compact
  def __call__(self, h: Array) -> distrax.Transformed:
    chex.assert_rank(h, 2)
    base = GaussianPosterior(self.latent_dim, self.min_scale, name="base")(h)
    if self.num_steps == 0:
      return base
    context = nn.Dense(self.context_dim, name="context")(h) if self.context_dim else None
    steps = []
    for t in range(self.num_steps):
      reverse = t % 2 == 1
      masks = made_masks(input_degrees(self.latent_dim, reverse), self.hidden)
      params = MADEParams(self.latent_dim, tuple(self.hidden), self.context_dim,
                          self.out_init_scale, name=f"step_{t}")()
      masks = tuple(jnp.asarray(mk, params["input_kernel"].dtype) for mk in masks)
      steps.append(IAFStep(params, masks, context, self.forget_bias))
    # distrax.Chain applies its last bijector first.
    return distrax.Transformed(base, distrax.Chain(steps[::-1]))
