"""``jvae gap`` and ``jvae eval --method ais``: inference beyond the encoder (layer 6).

``jvae gap RUN --num-points N`` reports Cremer et al.'s (2018) approximation and amortization
gaps of a trained run on its first N test (or ``--split``) points, writes them to a new JSON file
in the run directory (never over an existing one) and prints the table.
``jvae eval RUN --method ais`` estimates log p(x) by annealed importance sampling (Wu et al. 2017)
instead of IWAE.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from jvae.cli.args import UsageError
from jvae.cli.build import take
from jvae.io import files

METHODS = ("iwae", "ais")


def eval_estimate(run, args, params, batch):
  """The jitted ``f(params, key, batch) -> (value, stderr)`` for ``jvae eval --method``.

  ``params`` (one seed) and ``batch`` are only traced, to turn a model that cannot be annealed
  (no ``sample_prior``, say) into a usage error before any work.
  """
  import jvae
  from jvae.inference.ais import ais_log_marginal

  if args.method == "iwae":
    return jax.jit(jvae.log_marginal(run.model, num_samples=args.num_samples,
                                     chunk_size=args.chunk_size, return_stderr=True))
  if run.data.num_classes is not None:
    raise UsageError("--method ais estimates log p(x) of unsupervised models; for an m2 run use "
                     "--method iwae (y is summed out exactly)")
  try:
    f = ais_log_marginal(run.model, num_steps=args.ais_steps, num_chains=args.ais_chains,
                         init=args.ais_init, return_stderr=True)
    jax.eval_shape(f, params, jax.random.key(0), batch)
  except (TypeError, ValueError) as err:
    raise UsageError(f"--method ais: {err}") from None
  return jax.jit(f)


def _free_path(run_dir: pathlib.Path, stem: str) -> pathlib.Path:
  """``run_dir/<stem>.json``, or ``<stem>-2.json``, ``-3``… when taken: nothing is overwritten."""
  path, i = run_dir / f"{stem}.json", 1
  while path.exists():
    i += 1
    path = run_dir / f"{stem}-{i}.json"
  return path


def gap_run(args, parser) -> int:
  """``jvae gap``: the inference gaps of one seed of a run on its first ``--num-points`` points."""
  del parser
  from jvae.cli.run import _seed_indices, _seed_params, load_run
  from jvae.inference.gap import amortization_gap, format_table

  run_dir = files.absolute(args.run_dir)
  run, state = load_run(run_dir)
  if run.data.num_classes is not None:
    raise UsageError("jvae gap needs an unsupervised run; an m2 run's q(z|x, y) has no single "
                     "amortized posterior over z")
  (i,) = _seed_indices(run.cfg, args.seed_index)
  params = _seed_params(state.best_params, i)
  data = run.data.split(args.split)
  n = min(args.num_points, int(jax.tree_util.tree_leaves(data)[0].shape[0]))
  points = jax.tree_util.tree_map(jnp.asarray, take(data, slice(0, n)))
  key = jax.random.key(run.cfg["seed"] + 3 * 10**6 + i)
  try:
    result = amortization_gap(
        run.model, params, key, points, log_marginal=args.log_marginal,
        num_samples=args.num_samples, ais_steps=args.ais_steps, ais_chains=args.ais_chains,
        local_steps=args.local_steps, eval_samples=args.eval_samples,
        init="amortized" if callable(getattr(run.model, "amortized_gaussian", None))
        else "prior")
  except (TypeError, ValueError) as err:
    raise UsageError(f"jvae gap: {err}") from None
  result = {"run_dir": str(run_dir), "seed_index": i, "split": args.split, **result}
  path = _free_path(run_dir, f"gap-{args.split}-{n}")
  files.create_json(path, result)
  print(format_table(result))
  print(f"wrote {path}")
  return 0
