r"""Semi-amortized inference: the encoder's λ refined by unrolled gradient steps (layer 5).

Kim, Wiseman, Miller, Sontag & Rush (2018), "Semi-Amortized Variational Autoencoders", Alg. 1:
the encoder gives λ₀ = enc_φ(x); T steps of gradient ascent on the local ELBO refine it,

.. math::
   \lambda_{t+1} = \lambda_t + \alpha \nabla_\lambda \hat{\mathcal L}(\lambda_t; \theta, x),
   \qquad t = 0, \dots, T - 1,

and the model is trained on L̂(λ_T; θ, x). The steps are differentiable, so the encoder's gradient
runs back through them (Hessian-vector products of the local ELBO, which JAX's autodiff of the
unrolled ``lax.scan`` gives exactly; Kim et al. use finite differences for them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvae.bounds.numerics import check_number
from jvae.inference.local import (
    LocalGaussian,
    _log_weights,
    amortized_local,
    check_local,
    check_posterior,
    check_steps,
)
from jvae.models.contract import check_batch, check_model, num_examples
from jvae.objectives.log_weights import check_key, check_num_samples, tree_stop
from jvae.objectives.objectives import Objective, with_checks

Array = jax.Array


def _local_bound(model, params, key, batch, lam, num_samples, beta):
  """Per-point L̂(λ; θ, x) with the full reparameterization gradient, ``(batch,)``."""
  return jnp.mean(_log_weights(model, params, key, batch, lam, num_samples, beta, "reparam"), 0)


def refine(model, params, key, batch, lam: LocalGaussian, *, steps: int, step_size: float,
           num_samples: int = 1, beta=1.0) -> LocalGaussian:
  r"""T differentiable gradient-ascent steps on the local ELBO: λ_{t+1} = λ_t + α ∇_λ Σᵢ L̂ᵢ(λ_t).

  Step t draws its ε from ``fold_in(key, t)`` (fixed for a given key, so the map key → λ_T is
  deterministic and differentiable). The gradient of the sum over points is, row by row, each
  point's own gradient. ``jax.grad`` through the result reaches ``lam`` (through the unrolled
  steps) and ``params``.

  Args:
    model: any :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    params: model parameters θ (the generative part is used).
    key: PRNG key.
    batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    lam: :class:`LocalGaussian` λ₀, one row per point.
    steps: T ≥ 1.
    step_size: α > 0 (plain gradient ascent on (μ, log σ[, L′])).
    num_samples: K ≥ 1 samples per step.
    beta: weight of log p(z) − log q in the refined bound.
  Returns:
    λ_T, a :class:`LocalGaussian` like ``lam``.
  """
  check_model(model)
  check_key(key)
  check_steps(steps)
  check_number(step_size, "step_size", minimum=0.0, strict=True)
  check_num_samples(num_samples)
  b = check_batch(batch)
  check_local(lam, b.x.shape[0])
  return _refine(model, params, key, b, lam, steps, step_size, num_samples, beta)


def _refine(model, params, key, batch, lam, steps, step_size, num_samples, beta):
  def body(lam, t):
    k = jax.random.fold_in(key, t)
    grads = jax.grad(lambda v: jnp.sum(_local_bound(model, params, k, batch, v, num_samples,
                                                    beta)))(lam)
    return jax.tree_util.tree_map(lambda a, g: a + step_size * g, lam, grads), None

  lam, _ = jax.lax.scan(body, lam, jnp.arange(steps))
  return lam


def semi_amortized_elbo(model, *, steps: int, step_size: float, num_samples: int = 1,
                        stop_gradient: bool = False, posterior: str | None = None) -> Objective:
  r"""The semi-amortized ELBO: L̂(λ_T; θ, x) at the encoder's λ₀ refined by T gradient steps.

  Kim et al. (2018), Alg. 1. With λ₀ = enc_φ(x) (``model.amortized_gaussian``), λ_T =
  :func:`refine`\ (λ₀) run at stopped θ, and the final ε from ``fold_in(key, steps)``:

  * value: L̂(λ_T; θ, x) ≤ log p(x), per point. With ``beta`` (KL warm-up) every log-weight is
    log p(x|z) + β(log p(z) − log q), in the refinement steps as in the final bound, so λ is
    refined toward the objective being trained.
  * ``stop_gradient=False`` (SA-VAE): θ gets the partial derivative ∂L̂(λ_T, θ)/∂θ with λ_T
    held fixed (Kim et al.'s θ̄ = ∇_θ L(λ_K, θ, x): the refinement sees stopped θ, so λ_T's own
    dependence on θ is not differentiated); φ gets the total derivative
    dL̂(λ_T)/dλ_T · dλ_T/dλ₀ · dλ₀/dφ through the unrolled steps.
  * ``stop_gradient=True`` (as Krishnan et al. 2018, "On the challenges of learning with
    inference networks on sparse, high-dimensional data", and Kim et al.'s "VAE + SVI"): λ_T
    is stopped before the final evaluation, so θ learns from ∂L̂(stop(λ_T), θ)/∂θ alone, and the
    encoder learns from its own ELBO at stopped θ, ∇_φ L̂(λ₀(φ); stop(θ)), drawn with the same
    final ε. No second derivative is taken. The value is still L̂(λ_T; θ, x); the encoder's
    term only adds its gradient (``f − stop(f)``).

  ``jax.jit``, ``jax.vmap`` and ``jax.grad`` apply, and it trains with :func:`jvae.trainer`
  like any objective. Cost: each refinement step is a forward and a backward pass of the decoder
  (for ∇_λ); differentiating through the steps (``stop_gradient=False``) roughly doubles that
  (Hessian-vector products), while ``stop_gradient=True`` adds one pass for the encoder's own
  ELBO instead.

  Args:
    model: a :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)`` and that has
      ``amortized_gaussian(params, batch)`` (``jvae.VAE`` with a Gaussian encoder).
    steps: T ≥ 1 refinement steps.
    step_size: α > 0.
    num_samples: K ≥ 1 samples per step and for the final bound.
    stop_gradient: see above.
    posterior: the family of λ (``"gaussian"`` or ``"full_cov"``); None: the encoder's own.
  Returns:
    ``f(params, key, batch, *, beta=1.0, temperature=None) -> Array[batch]``.
  """
  check_model(model)
  check_steps(steps)
  check_number(step_size, "step_size", minimum=0.0, strict=True)
  check_num_samples(num_samples)
  if posterior is not None:
    check_posterior(posterior)
  if not isinstance(stop_gradient, bool):
    raise TypeError(f"stop_gradient must be a bool, got {stop_gradient!r}")
  if not callable(getattr(model, "amortized_gaussian", None)):
    raise TypeError(f"semi_amortized_elbo refines the encoder's Gaussian λ(x) and needs "
                    f"model.amortized_gaussian(params, batch) -> (loc, scale, lower or None); "
                    f"{type(model).__name__} has none")

  def body(model, params, key, batch, beta):
    lam0 = amortized_local(model, params, batch, posterior=posterior)
    check_local(lam0, num_examples(batch))
    fixed = tree_stop(params)
    lam_t = _refine(model, fixed, key, batch, lam0, steps, step_size, num_samples, beta)
    final = jax.random.fold_in(key, steps)
    if not stop_gradient:
      return _local_bound(model, params, final, batch, lam_t, num_samples, beta)
    value = _local_bound(model, params, final, batch, tree_stop(lam_t), num_samples, beta)
    own = _local_bound(model, fixed, final, batch, lam0, num_samples, beta)
    return value + (own - jax.lax.stop_gradient(own))

  return with_checks(body, model)
