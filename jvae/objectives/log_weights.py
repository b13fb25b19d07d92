r"""Log-weights of a model's samples, with the gradient paths the estimators need (layer 4).

For z_k ~ q(z|x), k = 1…K, log w_k = log p(x|z_k) + β(log p(z_k) − log q(z_k|x)). Everything here
is written against the :class:`jvae.LatentModel` contract (``propose`` and ``log_joint``), so it
holds for every model that meets it.

Gradient estimators (``estimator=``):
  * ``"reparam"``: the standard reparameterization gradient (Kingma & Welling 2014).
  * ``"stl"``: sticking the landing (Roeder et al. 2017): log q(z|x) is evaluated at
    ``density_params = stop_gradient(params)``, dropping the zero-mean score term.
  * ``"dreg"``: doubly-reparameterized gradients (Tucker et al. 2018): the encoder gets
    Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ, the decoder the usual Σ_k w̃_k ∇_θ log w_k.
  * ``"score"`` and ``"vimco"``: score-function estimators for models with discrete latents
    (``Proposal.log_q_score``), see :mod:`jvae.objectives.score`.

The first three are pathwise: they need every latent site reparameterized, and refuse a model
whose proposal has non-reparameterized sites, at trace time, rather than return a gradient that
silently lacks the score term.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jvae.models.contract import check_model

Array = jax.Array

PATHWISE = ("reparam", "stl", "dreg")
SCORE_FUNCTION = ("score", "vimco")
ESTIMATORS = PATHWISE + SCORE_FUNCTION

_stop = jax.lax.stop_gradient


def tree_stop(tree):
  """``stop_gradient`` on every leaf of a pytree of arrays (params, not distributions)."""
  return jax.tree_util.tree_map(_stop, tree)


def check_key(key) -> None:
  """Raise a TypeError at trace time unless ``key`` is a PRNG key (typed, or raw uint32[2])."""
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return
  elif dtype == jnp.uint32 and shape == (2,):
    return
  got = f"{dtype}{list(shape)}" if dtype is not None else type(key).__name__
  raise TypeError(
      "key must be a single PRNG key (jax.random.key(seed), or a raw jax.random.PRNGKey of "
      f"uint32[2]); got {got}. To use many keys, jax.vmap over them.")


def check_num_samples(num_samples, name="num_samples") -> int:
  """``num_samples`` if it is an int ≥ 1, else a ValueError naming ``name``."""
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {num_samples!r}")
  return num_samples


def check_estimator(estimator: str, allowed=ESTIMATORS) -> str:
  """``estimator`` if it is one of ``allowed``, else a ValueError listing them."""
  if estimator not in allowed:
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {allowed}")
  return estimator


def check_gradient_paths(model, proposal, estimator: str) -> None:
  """Raise a ValueError when ``estimator`` cannot give the gradient for ``proposal``'s sites.

  Pathwise estimators need every site reparameterized; the score-function ones need the log q
  of the sites that are not (``Proposal.log_q_score``).
  """
  discrete = proposal.log_q_score is not None
  name = type(model).__name__
  if discrete and estimator in PATHWISE:
    raise ValueError(
        f"{name} has latent sites that are not reparameterized (discrete; its proposal sets "
        f"log_q_score), so estimator={estimator!r} would silently drop the score term of the "
        "gradient. Use estimator='score' (baseline=None, 'ema' or 'nvil') or, for K-sample "
        "bounds, 'vimco'; or a Concrete relaxation of the model")
  if not discrete and estimator in SCORE_FUNCTION:
    raise ValueError(
        f"estimator={estimator!r} is a score-function estimator for discrete latents (sites a "
        f"proposal marks with log_q_score), and every latent of {name} is reparameterized; "
        "use 'reparam', 'stl' or 'dreg'")


def check_beta(beta) -> None:
  """Reject a concrete β that is negative or NaN; a traced β is left to the caller."""
  if isinstance(beta, (int, float)) and not (beta >= 0 and math.isfinite(beta)):
    raise ValueError(f"beta (the KL weight) must be a finite number >= 0, got {beta!r}")


class LogWeights(NamedTuple):
  """Log-weights of K samples, shape ``(K, batch)``, with estimator-specific gradient paths.

  ``value``: gradient of the estimator's log w through every parameter: the full
  reparameterization gradient for ``"reparam"``, the STL gradient (log q at stopped params) for
  ``"stl"``/``"dreg"``.
  ``theta``: same values; gradient only through the parameters' direct effect on
  log p(x, z) (z held fixed): the decoder and prior parameters θ.
  ``phi``: same values; gradient only through z (log p(x, ·) at stopped params) and log q: the
  encoder parameters φ.
  Without ``split`` all three are the same array. With it, ``value``'s gradient is the sum of
  the other two, which is the total derivative by the chain rule.

  ``log_q_score``: the proposal's ``log_q_score`` (``(K, batch)`` or None), for score-function
  estimators.
  """

  value: Array
  theta: Array
  phi: Array
  log_q_score: Array | None = None


def sample_log_weights(model, params, key, batch, num_samples: int, *,
                       estimator: str = "reparam", beta=1.0, split: bool = False) -> LogWeights:
  """Draw z_k ~ q(z|x), sample axis first; log w_k = log p(x|z_k) + β(log p(z_k) − log q(z_k|x)).

  Args:
    model: any :class:`jvae.LatentModel`.
    params, key, batch: as for any objective.
    num_samples: K.
    estimator: ``"reparam"`` keeps the score term of log q; ``"stl"``/``"dreg"`` evaluate log q
      at stopped parameters (Roeder et al. 2017); ``"score"``/``"vimco"`` (discrete latents)
      keep log q at live parameters and return ``log_q_score`` for the surrogate.
    beta: weight of log p(z) − log q(z|x) (KL warm-up).
    split: also return separate θ and φ gradient paths (always on for ``"dreg"``). Costs a
      second ``log_joint``.
  Returns:
    :class:`LogWeights` of shape ``(K, batch)``.
  """
  check_model(model)
  density = tree_stop(params) if estimator in ("stl", "dreg") else None
  proposal = model.propose(params, key, batch, num_samples=num_samples, density_params=density)
  check_gradient_paths(model, proposal, estimator)
  z, log_q = proposal.z, proposal.log_q

  def log_w(p, z, log_q):
    joint = model.log_joint(p, batch, z)
    return joint.log_lik + beta * (joint.log_prior - log_q)

  if not (split or estimator == "dreg"):
    lw = log_w(params, z, log_q)
    return LogWeights(lw, lw, lw, proposal.log_q_score)
  lw_theta = log_w(params, tree_stop(z), _stop(log_q))
  lw_phi = log_w(tree_stop(params), z, log_q)
  return LogWeights(with_surrogate(lw_theta, lw_theta + lw_phi), lw_theta, lw_phi,
                    proposal.log_q_score)


def weighted(lw_weights: Array, lw_grad: Array, axis: int, power: int) -> Array:
  """Σ_k stop(w̃_k)^power · lw_grad_k: a surrogate whose gradient is the (DReG) IWAE gradient."""
  w = _stop(jax.nn.softmax(lw_weights, axis=axis))
  return jnp.sum(w ** power * lw_grad, axis=axis)


def with_surrogate(value: Array, surrogate: Array) -> Array:
  """The value of ``value`` (exactly: ``surrogate − stop(surrogate)`` adds a zero) with the
  gradient of ``surrogate``."""
  return _stop(value) + (surrogate - _stop(surrogate))
