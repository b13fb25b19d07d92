"""Training stabilizers: pure functions of the step or of per-dimension KL (layer 1).

They keep training out of the bad equilibrium where q(z|x) collapses onto the prior early on.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import check_number

Array = jax.Array

__all__ = ["linear_warmup", "constant_beta", "free_bits_kl", "exponential_temperature"]


def exponential_temperature(*, initial: float = 1.0, minimum: float = 0.5, rate: float = 1e-4,
                            every: int = 1):
  r"""Temperature annealing τ(t) = max(τ_min, τ_0 · exp(−r · ⌊t/N⌋·N)) (Jang et al. 2017, Sec. 4).

  Jang et al. anneal the Gumbel-softmax temperature from 1 with r ∈ {1e-5, 1e-4} to a floor of
  0.5, updating it every N = 500 steps. Returns a pure function ``step -> τ`` (jit/vmap safe)
  for ``jvae.trainer(..., temperature=...)``.

  Raises:
    ValueError: a non-positive or non-finite ``initial`` or ``minimum``, ``minimum > initial``, a
      negative ``rate``, or ``every < 1``.
  """
  check_number(initial, "exponential_temperature initial", minimum=0.0, strict=True)
  check_number(minimum, "exponential_temperature minimum", minimum=0.0, strict=True,
               maximum=initial)
  check_number(rate, "exponential_temperature rate", minimum=0.0)
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"exponential_temperature every: expected an integer >= 1, got {every!r}")

  def schedule(step):
    t = (jnp.asarray(step, jnp.int32) // every * every).astype(jnp.float32)
    return jnp.maximum(minimum, initial * jnp.exp(-rate * t))

  return schedule


def linear_warmup(num_steps: int, *, beta_max: float = 1.0):
  r"""KL warm-up: β(t) = β_max · min(1, t / N) (Bowman et al. 2015; Sønderby et al. 2016).

  Returns a pure function ``step -> beta`` (jit/vmap safe). ``num_steps = 0`` gives β = β_max.

  Raises:
    ValueError: ``num_steps < 0``, or a static ``beta_max`` that is NaN, infinite or negative (a
      negative β rewards the KL term, so the objective is no longer a bound).
  """
  if num_steps < 0:
    raise ValueError(f"warm-up num_steps must be >= 0, got {num_steps}")
  check_number(beta_max, "linear_warmup beta_max", minimum=0.0)

  def schedule(step):
    if num_steps == 0:
      return jnp.asarray(beta_max, jnp.float32)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / num_steps, 1.0)
    return beta_max * frac

  return schedule


def constant_beta(beta: float):
  """A constant β schedule ``step -> beta`` (β-VAE, Higgins et al. 2017).

  Raises:
    ValueError: a static ``beta`` that is NaN, infinite or negative.
  """
  check_number(beta, "constant_beta beta", minimum=0.0)
  return lambda step: jnp.asarray(beta, jnp.float32)


def free_bits_kl(kl_per_dim: Array, *, lam: float, num_latent_groups: int | None = None,
                 num_groups: int | None = None) -> Array:
  r"""Per-data-point KL penalty with free bits (Kingma et al. 2016, Eq. 15).

  The latent dimensions are split into ``num_latent_groups`` contiguous groups g; with
  :math:`\overline{KL}_g = \mathbb E_{\text{batch}}[KL_g]`, the penalty is
  :math:`\sum_g \max(\lambda, \overline{KL}_g)`. Groups already above λ nats are penalised by
  their per-point KL; groups below are held at λ with zero gradient. The batch mean of the result
  equals the free-bits penalty exactly.

  Args:
    kl_per_dim: shape ``(batch, d)``, per-dimension KL(q(z_j|x) ‖ p(z_j)) of each data point.
    lam: λ in nats per group.
    num_latent_groups: number of groups G of latent dimensions; must divide d.
    num_groups: the former name of ``num_latent_groups`` (kept as an alias; MIWAE's
      ``num_groups`` counts groups of samples, a different thing).
  Returns:
    shape ``(batch,)``.

  Raises:
    ValueError: the group count does not divide d, both names are given, or a static ``lam`` is
      NaN, infinite or negative (λ = NaN would turn every penalty into NaN at run time instead).
  """
  check_number(lam, "free_bits_kl lam", minimum=0.0)
  if (num_latent_groups is None) == (num_groups is None):
    raise ValueError("free_bits_kl: give num_latent_groups (or its alias num_groups), exactly once")
  groups = num_latent_groups if num_groups is None else num_groups
  chex.assert_rank(kl_per_dim, 2)
  batch, d = kl_per_dim.shape
  if groups < 1 or d % groups:
    raise ValueError(f"free bits: num_latent_groups must divide the latent size {d}, got {groups}")
  kl_g = kl_per_dim.reshape(batch, groups, d // groups).sum(-1)
  active = jnp.mean(kl_g, axis=0) > lam
  return jnp.sum(jnp.where(active, kl_g, jnp.asarray(lam, kl_g.dtype)), axis=-1)
