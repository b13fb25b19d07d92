"""Per-example estimates of a bound over a whole data set, in batches: ``evaluate_pointwise``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jvae.models.contract import Batch, data_of


def evaluate_pointwise(bound: Callable, params, key, data, *, batch_size: int = 100) -> dict:
  """Every example's estimate, its Monte-Carlo error, and their means, over a whole data set.

  One ``lax.fori_loop`` over batches, pure and jittable. Batch i is examples
  ``[i·B, (i+1)·B)`` with key ``fold_in(key, i)``, the batches and keys of
  :func:`jvae.evaluate`, so when B divides N ``mean`` is ``jvae.evaluate``'s. When it does not,
  the last batch is the last B examples; for the examples it shares with the batch before, its
  estimates replace the earlier ones, so every example still has exactly one. The data set is
  sliced in place (no padded copy), so memory is one batch's working set of ``bound`` (for
  ``jvae.log_marginal``: ``chunk_size × batch_size`` rows) plus the ``(N, ...)`` outputs.

  Args:
    bound: ``f(params, key, x) -> Array[B, ...]``, or a ``(value, stderr)`` pair of such arrays,
      e.g. ``jvae.log_marginal(model, num_samples=5000, chunk_size=40, return_stderr=True)``.
    params: model parameters.
    key: PRNG key.
    data: x ``(N, *event)`` (any dtype; batches are cast to float32) or a :class:`jvae.Batch`
      of arrays with leading axis N ≥ 1.
    batch_size: examples per batch B (clipped to N).

  Returns:
    A dict of arrays:
      ``values``: ``(N, ...)``, each example's estimate;
      ``stderrs``: ``(N, ...)``, each estimate's Monte-Carlo standard error (None when ``bound``
        returns a single array);
      ``mean``: ``(...)``, the mean of ``values`` over the N examples;
      ``mc_stderr``: ``(...)``, the Monte-Carlo error of ``mean`` for these examples,
        sqrt(Σ se_i²) / N (None without ``stderrs``);
      ``stderr_over_examples``: ``(...)``, the sampling error of a data-set mean,
        std(values, ddof=1) / √N (NaN for N = 1).
  """
  x = data_of(data)
  if x.ndim < 2 or x.shape[0] < 1:
    raise ValueError(f"data must have shape (N, *event) with N >= 1, got {x.shape}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  n = x.shape[0]
  b = min(batch_size, n)
  num_batches = -(-n // b)

  def batch(i):
    start = jnp.minimum(i * b, n - b)
    part = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, b), data)
    if isinstance(part, Batch):
      return start, part._replace(x=part.x.astype(jnp.float32))
    return start, part.astype(jnp.float32)

  probe = jax.eval_shape(bound, params, key, batch(0)[1])
  pair = isinstance(probe, tuple)
  outs = tuple(probe) if pair else (probe,)
  init = tuple(jnp.zeros((n, *o.shape[1:]), o.dtype) for o in outs)

  def body(i, acc):
    start, part = batch(i)
    out = bound(params, jax.random.fold_in(key, i), part)
    out = tuple(out) if pair else (out,)
    return tuple(jax.lax.dynamic_update_slice_in_dim(a, o, start, axis=0)
                 for a, o in zip(acc, out, strict=True))

  results = jax.lax.fori_loop(0, num_batches, body, init)
  values = results[0]
  stderrs = results[1] if pair else None
  return {
      "values": values,
      "stderrs": stderrs,
      "mean": jnp.mean(values, axis=0),
      "mc_stderr": None if stderrs is None else jnp.sqrt(jnp.sum(jnp.square(stderrs), 0)) / n,
      "stderr_over_examples": jnp.std(values, axis=0, ddof=1) / jnp.sqrt(n),
  }
