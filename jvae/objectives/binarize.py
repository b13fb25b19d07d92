"""Dynamic binarization of an objective's data (layer 4).

Burda et al. (2015) and most later work train on MNIST binarized *dynamically*: every time a
training image is used, its pixels are drawn afresh as Bernoulli variables with the grey levels
as probabilities, x ~ Bernoulli(p). The bound is then one of the data distribution of the drawn
images, and the test set is one fixed draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvae.models.contract import Batch


def bernoulli_draw(key, probs):
  """A {0, 1} draw of the same shape and float dtype as ``probs`` (values in [0, 1])."""
  probs = jnp.asarray(probs)
  dtype = probs.dtype if jnp.issubdtype(probs.dtype, jnp.floating) else jnp.float32
  return jax.random.bernoulli(key, probs).astype(dtype)


def dynamic_binarization(objective):
  """``objective`` on a fresh Bernoulli draw of its batch of probabilities, at every call.

  The returned ``g(params, key, batch, **kwargs)`` splits ``key`` into one key for the draw
  x ~ Bernoulli(batch) (of x alone, when ``batch`` is a :class:`jvae.Batch`) and one for the
  objective, and returns ``objective(params, key', x, **kwargs)``, ``(batch,)``. A stateful
  objective (``init_state``/``with_state``) stays stateful. Gradients with respect to the
  pixel probabilities are not defined (the draw is discrete).

  Args:
    objective: ``f(params, key, batch, **kwargs) -> Array[batch]``, e.g. ``jvae.elbo(model)``.

  Returns:
    The wrapped objective, with the same call signature.
  """

  def draw(key, batch):
    k_draw, k_obj = jax.random.split(key)
    if isinstance(batch, Batch):
      return k_obj, batch._replace(x=bernoulli_draw(k_draw, batch.x))
    return k_obj, bernoulli_draw(k_draw, batch)

  def binarized(params, key, batch, **kwargs):
    key, batch = draw(key, batch)
    return objective(params, key, batch, **kwargs)

  if callable(getattr(objective, "with_state", None)):
    def with_state(params, key, batch, state, **kwargs):
      key, batch = draw(key, batch)
      return objective.with_state(params, key, batch, state, **kwargs)

    binarized.init_state = objective.init_state
    binarized.with_state = with_state
  return binarized
