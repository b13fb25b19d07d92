r"""An input-dependent baseline C_ψ(x) attached to any model (NVIL; Mnih & Gregor 2014) (layer 3).

``jvae.with_baseline(model)`` returns a model that meets the same contract with parameters
``{"model": params_of_model, "baseline": ψ}`` and one more method, ``baseline(params, batch) ->
(batch,)``. The score-function objectives (``estimator="score", baseline="nvil"``) subtract it
from the learning signal and train ψ by its own squared-error term, so the baseline lives in
``params`` and is trained by the same optimizer step, with no state outside the train state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.models.contract import Joint, Proposal, check_model, data_of

Array = jax.Array


class BaselineMLP(nn.Module):
  """C_ψ(x): an MLP from flattened x ``(batch, *event)`` to one number per point ``(batch,)``."""

  hidden: Sequence[int] = (100,)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      h = jnp.tanh(nn.Dense(width)(h))
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[:, 0]


class WithBaseline:
  """``model`` plus a learned baseline C_ψ(x); see :func:`with_baseline`.

  Attributes:
    model: the wrapped :class:`jvae.LatentModel`.
    net: the baseline network, a linen module ``x (batch, *event) -> (batch,)``.
  """

  def __init__(self, model, net: nn.Module):
    check_model(model)
    self.model = model
    self.net = net

  def init(self, key, batch) -> dict:
    k_model, k_net = jax.random.split(key)
    return {"model": self.model.init(k_model, batch),
            "baseline": self.net.init(k_net, data_of(batch))}

  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    density = None if density_params is None else density_params["model"]
    return self.model.propose(params["model"], key, batch, num_samples=num_samples,
                              density_params=density)

  def log_joint(self, params, batch, z) -> Joint:
    return self.model.log_joint(params["model"], batch, z)

  def baseline(self, params, batch) -> Array:
    """C_ψ(x), ``(batch,)``."""
    return self.net.apply(params["baseline"], data_of(batch))

  def at_temperature(self, temperature) -> WithBaseline:
    """The wrapped model at another relaxation temperature (for relaxed models only)."""
    if not callable(getattr(self.model, "at_temperature", None)):
      raise TypeError(f"a temperature was given but {type(self.model).__name__} has no "
                      "at_temperature method (only relaxed, e.g. Concrete, models have one)")
    return WithBaseline(self.model.at_temperature(temperature), self.net)

  def __getattr__(self, name: str) -> Any:
    # Other methods (generate, reconstruct, …) take the wrapped model's params.
    if name in ("model", "net"):
      raise AttributeError(name)
    return getattr(self.model, name)


def with_baseline(model, *, hidden: Sequence[int] = (100,), net: nn.Module | None = None
                  ) -> WithBaseline:
  """Attach NVIL's input-dependent baseline C_ψ(x) to ``model`` (Mnih & Gregor 2014, Sec. 3.3).

  Args:
    model: any :class:`jvae.LatentModel`.
    hidden: widths of the baseline MLP's tanh layers (the NVIL paper uses one of 100). Its
      output layer starts at zero, so C_ψ(x) = 0 at initialisation.
    net: a linen module ``x -> (batch,)`` to use instead of the MLP.
  Returns:
    A model with params ``{"model": …, "baseline": ψ}`` and a ``baseline(params, batch)``
    method.
  """
  return WithBaseline(model, net if net is not None else BaselineMLP(tuple(hidden)))
