"""Active units of a latent-variable model (Burda et al. 2015, §5.2) (layer 5).

A latent dimension u is *active* when its posterior mean moves with the data:

    A_u = Cov_x( E_{u ~ q(u|x)}[u] ) > 0.01,

the covariance over the data set x of the posterior mean (Burda et al. 2015, *Importance Weighted
Autoencoders*, Eq. 16 and Table 2). For a model whose q(z|x) is Gaussian
(``model.amortized_gaussian``) E_q[u] is the encoder's mean, exactly. For any other model (IAF
posteriors, several stochastic layers, where E_q[z_2] = E_{q(z_1|x)} E_{q(z_2|z_1)}[z_2]) it is
the mean of S samples of ``model.propose``; the variance over x of that Monte-Carlo mean is biased
upwards by E_x[Var_q(u|x)] / S, which is subtracted (with the within-x sample variance, an
unbiased estimate), so the estimate of A_u is unbiased for any S ≥ 2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jvae.models.contract import num_examples

BURDA_THRESHOLD = 0.01


class ActiveUnits(NamedTuple):
  """Per-dimension activity and the count of active units.

  Attributes:
    activity: a list with one ``(d_l,)`` numpy array A_u per latent leaf (per stochastic layer,
      in the order of the model's z).
    active: a list of the number of active units of each leaf, ``A_u > threshold``.
    total: the sum of ``active``.
    exact_mean: True when E_q[u] was the encoder's mean, False when it was sampled.
  """

  activity: list
  active: list
  total: int
  exact_mean: bool


def active_units(model, params, key, data, *, threshold: float = BURDA_THRESHOLD,
                 num_samples: int = 100, batch_size: int = 500) -> ActiveUnits:
  """Counts the active units A_u = Cov_x(E_q[u]) > ``threshold`` over ``data``.

  Args:
    model: a model meeting the :class:`jvae.LatentModel` contract.
    params: its parameters (one seed).
    key: PRNG key, used only when E_q[u] is sampled.
    data: x ``(N, *event)`` or a :class:`jvae.Batch`, N ≥ 2.
    threshold: the activity above which a unit counts as active (Burda et al.: 0.01).
    num_samples: S, samples per point when E_q[u] is sampled (≥ 2).
    batch_size: points per jitted call.

  Returns:
    An :class:`ActiveUnits`.
  """
  n = num_examples(data)
  if n < 2:
    raise ValueError(f"active_units needs at least 2 data points, got {n}")
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2 (the bias correction needs a sample variance), "
                     f"got {num_samples}")
  exact = callable(getattr(model, "amortized_gaussian", None))
  if exact:
    try:
      jax.eval_shape(model.amortized_gaussian, params,
                     jax.tree_util.tree_map(lambda a: a[:1], data))
    except TypeError:
      exact = False

  if exact:
    @jax.jit
    def moments(params, key, batch):
      loc = model.amortized_gaussian(params, batch)[0]
      return [loc], [jnp.zeros_like(loc)]
  else:
    @jax.jit
    def moments(params, key, batch):
      z = model.propose(params, key, batch, num_samples=num_samples).z
      leaves = jax.tree_util.tree_leaves(z)  # each (S, batch, d)
      means = [jnp.mean(a, axis=0).reshape(a.shape[1], -1) for a in leaves]
      # Var of the S-sample mean: the sample variance (ddof 1) over S.
      errs = [jnp.var(a, axis=0, ddof=1).reshape(a.shape[1], -1) / num_samples for a in leaves]
      return means, errs

  means, errs = [], []
  for i, start in enumerate(range(0, n, batch_size)):
    batch = jax.tree_util.tree_map(lambda a, s=start: jnp.asarray(a[s:s + batch_size]), data)
    m, e = moments(params, jax.random.fold_in(key, i), batch)
    means.append(jax.device_get(m))
    errs.append(jax.device_get(e))
  activity = []
  for leaf in range(len(means[0])):
    mu = np.concatenate([m[leaf] for m in means]).astype(np.float64)
    err = np.concatenate([e[leaf] for e in errs]).astype(np.float64)
    activity.append(mu.var(axis=0, ddof=1) - err.mean(axis=0))
  active = [int(np.sum(a > threshold)) for a in activity]
  return ActiveUnits(activity, active, int(sum(active)), exact)
