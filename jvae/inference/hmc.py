r"""Hamiltonian Monte Carlo on the posterior p(z|x) ∝ p(x, z) of any contract model (layer 5).

The target of one chain is the unnormalised log-density

.. math::
   \log \pi_i(z) = \log p(x_i|z) + \log p(z) = \log p(x_i, z),

which needs only the contract's ``log_joint`` (and its gradient in z). Each chain belongs to one
data point x_i and nothing couples the chains: the transition is blackjax's HMC kernel
(``blackjax.mcmc.hmc``: velocity-Verlet leapfrog with an identity mass matrix and a Metropolis
accept/reject, Neal 2011, "MCMC using Hamiltonian dynamics"), ``jax.vmap``-ed over the chains
of a point and over the points of a batch. ``z`` may be any pytree (one leaf per stochastic
layer); blackjax flattens each chain's leaves with ``jax.flatten_util.ravel_pytree``.

The step size of each chain can be adapted during a warm-up toward a target acceptance rate δ by
stochastic approximation (Robbins & Monro 1951; Andrieu & Thoms 2008, "A tutorial on adaptive
MCMC"), log ε_{t+1} = log ε_t + (t + 1)^{−0.6} (α_t − δ) with α_t the transition's acceptance
probability, and is then held fixed at the average of log ε over the second half of the warm-up
(Polyak averaging) for the sampling steps, which therefore leave p(z|x_i) invariant. (blackjax's
Nesterov dual averaging, Hoffman & Gelman 2014, was tried first: its averaged iterate remembers
the first, far-off steps for long, and on the oracles it ended at acceptance 0.83–0.93 for a
target of 0.75 after 150–400 warm-up steps; this rule ends within 0.02 of it.)

Also here: the per-point plumbing shared with :mod:`jvae.inference.ais` and
:mod:`jvae.inference.mcmc_em` (one-point slices of a batch, the per-chain log-joint, and the
look-up of the contract's optional methods with a clear error).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jvae.bounds.numerics import check_number
from jvae.models.contract import check_batch, check_model, num_examples
from jvae.objectives.log_weights import check_key, check_num_samples

Array = jax.Array


@functools.cache
def blackjax_hmc():
  """``blackjax.mcmc.hmc``, imported on first use: importing blackjax runs a JAX computation,
  which would start JAX's backends at ``import jvae`` (too early to choose, e.g., the number of
  CPU devices with ``jax.config.update("jax_num_cpu_devices", n)``)."""
  import blackjax.mcmc.hmc

  return blackjax.mcmc.hmc


@functools.cache
def _kernel():
  return blackjax_hmc().build_kernel()


_ADAPT_GAIN, _ADAPT_DECAY = 1.0, 0.6   # Robbins–Monro gain g_t = g (t + 1)^(−κ) on log ε

# What each optional method of the contract is, for the error raised when a model lacks it.
_OPTIONAL = {
    "sample_prior": "sample_prior(params, key, batch, *, num_samples) -> z ~ p(z), leaves "
                    "(K, batch, ...)",
    "log_q": "log_q(params, batch, z) -> (K, batch) log q(z|batch) at given z",
    "sample_joint": "sample_joint(params, key, num) -> (z, x) with (z, x) ~ p(z) p(x|z)",
}


class HMCInfo(NamedTuple):
  """Diagnostics of :func:`hmc_posterior`'s chains, one entry per chain.

  Attributes:
    acceptance_rate: ``(K, batch)`` mean Metropolis acceptance probability min(1, e^{−ΔH}) over
      the ``num_steps`` sampling steps (warm-up excluded).
    step_size: ``(K, batch)`` leapfrog step size of the sampling steps (after adaptation).
    num_divergent: ``(K, batch)`` int32 number of sampling steps whose energy error exceeded
      blackjax's divergence threshold (1000 nats).
  """

  acceptance_rate: Array
  step_size: Array
  num_divergent: Array


def require_method(model, name: str, purpose: str) -> Callable:
  """``model.<name>``, an optional method of the contract, or a TypeError saying who needs it."""
  method = getattr(model, name, None)
  if not callable(method):
    raise TypeError(f"{purpose} needs the optional model method {_OPTIONAL.get(name, name)}, "
                    f"and {type(model).__name__} has no {name} method")
  return method


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
  """``value`` if it is an int ≥ ``minimum``, else a ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return value


def check_probability(value, name: str) -> float:
  """``value`` if it is a number in the open interval (0, 1), else a ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
    raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
  return float(value)


def point_slices(batch):
  """``batch`` with a size-1 axis after the example axis: mapping over axis 0 gives one-point
  batches (x ``(1, *event)``, side fields likewise)."""
  return jax.tree_util.tree_map(lambda a: a[:, None], batch)


def point_log_joint(model, params, point, z) -> tuple[Array, Array]:
  """log p(x|z) and log p(z) (scalars) of one chain: ``point`` a one-point batch, ``z`` a pytree
  with the leaves of one chain (no sample or batch axis)."""
  joint = model.log_joint(params, point, jax.tree_util.tree_map(lambda a: a[None, None], z))
  return joint.log_lik[0, 0], joint.log_prior[0, 0]


def point_log_q(model, params, point, z) -> Array:
  """log q(z|x) (a scalar) of one chain, by the optional ``model.log_q``."""
  return model.log_q(params, point, jax.tree_util.tree_map(lambda a: a[None, None], z))[0, 0]


def check_chains(z, num_points: int, what: str = "z_init") -> int:
  """The number K of chains per point of ``z`` (leaves ``(K, batch, ...)``), or a clear error."""
  leaves = jax.tree_util.tree_leaves(z)
  if not leaves:
    raise ValueError(f"{what} has no arrays; expected a pytree of (K, batch, ...) arrays "
                     "shaped like model.propose(...).z")
  shapes = [tuple(getattr(a, "shape", ())) for a in leaves]
  for leaf, shape in zip(leaves, shapes, strict=True):
    if len(shape) < 2 or shape[1] != num_points:
      raise ValueError(f"every leaf of {what} must have shape (K, batch={num_points}, ...) like "
                       f"model.propose(...).z, got shapes {shapes}")
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"{what} must be floating-point (HMC moves z continuously), got dtype "
                      f"{leaf.dtype}")
  if len({s[0] for s in shapes}) != 1:
    raise ValueError(f"the leaves of {what} have different numbers of chains K (axis 0): "
                     f"{shapes}")
  return shapes[0][0]


def over_chains(fn: Callable, chain_args: int, point_args: int = 0) -> Callable:
  """``fn(point, *per_point, *per_chain)`` mapped over a ``(K, batch)`` grid of chains.

  ``point`` is mapped over the batch axis (0) only; the ``point_args`` arguments after it
  (leading axis ``batch``) likewise; the last ``chain_args`` arguments (leaves ``(K, batch,
  ...)``) over both. Outputs have leaves ``(K, batch, ...)``.
  """
  inner = jax.vmap(fn, in_axes=(None,) + (None,) * point_args + (0,) * chain_args)
  return jax.vmap(inner, in_axes=(0,) + (0,) * point_args + (1,) * chain_args, out_axes=1)


def hmc_step(key, state, logdensity_fn: Callable, step_size, num_leapfrog: int,
             jitter: float = 0.0):
  """One HMC transition of one chain (blackjax), identity mass matrix; ``(key, state, info)``.

  ``key`` is the chain's running key: it is split once here into the key carried to the next
  transition, the kernel's and the jitter's (one split per transition, since every split or
  ``fold_in`` is a Threefry hash that XLA compiles anew in each program).

  With ``jitter`` > 0 the leapfrog step is ε·u, u ~ U(1 − jitter, 1 + jitter) drawn afresh
  (randomized step sizes, Neal 2011, "MCMC using Hamiltonian dynamics"): independent of the
  state, so every such transition still leaves the target invariant, and it breaks the
  near-periodic trajectories that a fixed length L·ε has on (near-)Gaussian targets, where a
  chain can otherwise barely move (measured on the linear-Gaussian oracle with L·ε = 1: chains
  started 3 sd off the posterior mean still had their mean 6–8 standard errors off after 20
  transitions with jitter 0.2, within 2.2 with jitter 0.5).
  """
  flat, _ = ravel_pytree(state.position)
  key, kernel_key, eps_key = jax.random.split(key, 3)
  if jitter:
    step_size = step_size * jax.random.uniform(eps_key, (), flat.dtype, 1.0 - jitter,
                                               1.0 + jitter)
  state, info = _kernel()(kernel_key, state, logdensity_fn, step_size,
                        jnp.ones(flat.shape, flat.dtype), num_leapfrog)
  return key, state, info


def check_jitter(jitter) -> float:
  """``jitter`` if it is a number in [0, 1), else a ValueError."""
  if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
    raise ValueError(f"jitter (the step-size randomization) must be a number in [0, 1), got "
                     f"{jitter!r}")
  return float(jitter)


def hmc_posterior(model, *, num_steps: int, num_leapfrog: int = 10, step_size: float = 0.1,
                  target_accept: float = 0.8, num_adapt: int = 0,
                  jitter: float = 0.5) -> Callable:
  r"""HMC chains on p(z|x_i) ∝ p(x_i, z), one or more per data point; pure and jittable.

  Each chain runs ``num_adapt`` warm-up transitions whose step size ε follows the
  stochastic-approximation rule of the module docstring toward acceptance rate
  ``target_accept`` (starting at ``step_size``), then ``num_steps`` transitions at the averaged
  ε, each ``num_leapfrog`` leapfrog steps with an identity mass matrix and an accept/reject.
  Only the sampling transitions leave p(z|x_i) invariant. Cost per chain:
  ``(num_adapt + num_steps) · num_leapfrog`` gradients of ``log_joint`` (plus one at the start).

  Chains are independent: chain k of point i uses the key
  ``fold_in(fold_in(key, i), k)`` (then split at every transition) and sees only x_i, so
  its result does not depend on the other points or chains of the batch (up to floating point).

  Args:
    model: any :class:`jvae.LatentModel` (only ``log_joint`` is used).
    num_steps: sampling transitions per chain, ≥ 1.
    num_leapfrog: leapfrog steps L per transition, ≥ 1 (trajectory length L·ε).
    step_size: the initial (or, with ``num_adapt=0``, the fixed) leapfrog step size ε > 0.
    target_accept: the acceptance rate that the warm-up aims for, in (0, 1); 0.65–0.8 is usual.
    num_adapt: warm-up transitions with step-size adaptation, ≥ 0 (0: no adaptation).
    jitter: each transition's step is ε·u, u ~ U(1 − jitter, 1 + jitter), in [0, 1) (0: the
      plain fixed step); see :func:`hmc_step`. ``info.step_size`` reports ε.

  Returns:
    ``f(params, key, batch, z_init, *, step_size=None) -> (z, info)``: ``z_init`` a pytree shaped
    like ``model.propose(...).z``, every leaf ``(K, batch, ...)`` (K chains per point, e.g. K
    draws from q(z|x)); ``z`` the chains' final states, shaped like ``z_init``; ``info`` a
    :class:`HMCInfo`. The keyword ``step_size`` overrides the factory's (a traced scalar or an
    array broadcastable to ``(K, batch)`` is fine; :func:`jvae.inference.mcmc_em` passes its
    running step size there).
  """
  check_model(model)
  check_num_samples(num_steps, "num_steps")
  check_num_samples(num_leapfrog, "num_leapfrog")
  check_positive_int(num_adapt, "num_adapt", minimum=0)
  check_number(step_size, "HMC step_size", minimum=0.0, strict=True)
  target = check_probability(target_accept, "target_accept")
  jitter = check_jitter(jitter)

  def chain(params, key, point, index, sample, z0, eps0):
    def logdensity(z):
      return sum(point_log_joint(model, params, point, z))

    chain_key = jax.random.fold_in(jax.random.fold_in(key, index), sample)
    state = blackjax_hmc().init(z0, logdensity)
    half = num_adapt // 2

    def warm(carry, t):
      key, state, log_eps, log_sum = carry
      key, state, info = hmc_step(key, state, logdensity, jnp.exp(log_eps), num_leapfrog,
                                  jitter)
      log_sum = log_sum + jnp.where(t >= half, log_eps, 0.0)
      gain = _ADAPT_GAIN * (t + 1.0) ** -_ADAPT_DECAY
      log_eps = log_eps + gain * (info.acceptance_rate - target)
      return (key, state, log_eps, log_sum), None

    eps = eps0
    if num_adapt:
      init = (chain_key, state, jnp.log(eps0), jnp.zeros((), eps0.dtype))
      (chain_key, state, _, log_sum), _ = jax.lax.scan(warm, init, jnp.arange(num_adapt))
      eps = jnp.exp(log_sum / (num_adapt - half))

    def sample_step(carry, _):
      key, state, accept, divergent = carry
      key, state, info = hmc_step(key, state, logdensity, eps, num_leapfrog, jitter)
      return (key, state, accept + info.acceptance_rate,
              divergent + info.is_divergent.astype(jnp.int32)), None

    init = (chain_key, state, jnp.zeros((), eps.dtype), jnp.zeros((), jnp.int32))
    (_, state, accept, divergent), _ = jax.lax.scan(sample_step, init, None, length=num_steps)
    return state.position, HMCInfo(accept / num_steps, eps, divergent)

  def sample(params, key, batch, z_init, *, step_size=None):
    check_key(key)
    if not hasattr(batch, "shape") and not hasattr(batch, "_fields"):
      batch = jnp.asarray(batch)
    check_batch(batch)
    n = num_examples(batch)
    k = check_chains(z_init, n)
    eps = factory_step if step_size is None else step_size
    if step_size is not None:
      check_number(step_size, "HMC step_size", minimum=0.0, strict=True)
    dtype = jax.tree_util.tree_leaves(z_init)[0].dtype
    eps = jnp.broadcast_to(jnp.asarray(eps, dtype), (k, n))
    index = jnp.broadcast_to(jnp.arange(n), (k, n))
    sample_index = jnp.broadcast_to(jnp.arange(k)[:, None], (k, n))
    run = over_chains(lambda point, i, s, z, e: chain(params, key, point, i, s, z, e), 4)
    return run(point_slices(batch), index, sample_index, z_init, eps)

  factory_step = float(step_size)
  return sample

