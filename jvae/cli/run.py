"""What the ``jvae`` subcommands do: a training run directory and the tools that read it.

A run directory holds ``config.json``, ``metrics.jsonl`` (a line per epoch and seed),
``checkpoints/ckpt_*`` (Orbax, one per epoch, the last 3 kept, verified by a manifest),
``summary.json``, ``samples.png`` and ``reconstructions.png``. Every JSON file is strict JSON, a
non-finite number written as ``null``. How run directories are claimed, resumed and cleaned up
is in :mod:`jvae.cli.rundir`; the data, model and objectives a config describes (every model
family: VAEs with learned priors, hierarchical and ladder VAEs, the conditional VAE on ``Batch``
data, the semi-supervised M2) are built in :mod:`jvae.cli.build`.

For ``--model m2`` the summary's test bound is the unlabelled bound U(x) (``elbo``: y summed
out, a bound on log p(x)), beside the test classification error of q(y|x)
(``test_classification_error``), each per seed and over seeds; ``jvae eval`` estimates log p(x)
= log Σ_y p(x, y) by importance sampling with y enumerated and also reports the error.
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import numpy as np
import optax

import jvae
from jvae.cli import args as _cli
from jvae.cli import inference as _inference
from jvae.cli import rundir
from jvae.cli.build import (
    RunData,
    build_bound,
    build_model,
    classifier_weight,
    complete_config,
    load_data,
    size,
    take,
)
from jvae.io import checkpoint, files
from jvae.io import conditional_data as _cdata
from jvae.io import images as _images
from jvae.training import parallel as _parallel
from jvae.io.data import DataIntegrityError
from jvae.models.contract import data_of
from jvae.objectives import semi_supervised as _semi

__all__ = ["DataIntegrityError", "Run", "load_run", "RunData", "RunError", "UsageError",
           "build_bound",
           "build_model"]

CONFIG_KEYS = ("data", "valid_size", "likelihood", "model", "hidden", "latent_dim", "latent_dims",
               "prior", "vamp_components",
               "prior_components", "observed_quadrants", "labels", "classifier_weight",
               "posterior", "iaf_steps", "bound",
               "num_samples", "groups", "alpha", "elbo_weight", "kl", "estimator",
               "warmup_steps", "beta", "free_bits", "free_bits_groups", "matmul_precision",
               "sub_batches", "unroll",
               "epochs", "batch_size",
               "lr", "optimizer", "adam_eps", "lr_stages",
               "patience", "seed", "seeds", "devices", "parallel",
               "eval_samples")


UsageError = _cli.UsageError
INTERRUPTED = 130  # the exit status of a run stopped by SIGINT (128 + 2), as shells report it
NUM_RECONSTRUCTIONS = 16


class RunError(RuntimeError):
  """A run directory that cannot be used as asked (e.g. none of its checkpoints restores)."""


def _optimizer(cfg: dict, n_train: int):
  """The config's optax optimizer: Adam or Adamax with ``--adam-eps``, at ``--lr`` or staged."""
  lr = cfg["lr"]
  if cfg.get("lr_stages"):
    lr = jvae.staged_learning_rate(lr, stage_epochs=cfg["lr_stages"],
                                   steps_per_epoch=n_train // cfg["batch_size"])
  eps = cfg.get("adam_eps") or _cli.DEFAULT_ADAM_EPS
  return {"adam": optax.adam, "adamax": optax.adamax}[cfg["optimizer"]](lr, eps=eps)


class Run:
  """Everything built from a run's config: data, model, trainer and a template state."""

  def __init__(self, cfg: dict, *, mesh=None):
    self.cfg = cfg
    self.mesh = mesh
    self.data = load_data(cfg)
    _check_config(cfg, size(self.data.train))
    try:
      self.model = build_model(cfg, self.data)
      # --matmul-precision changes the training objective only: what is validated, tested and
      # evaluated is the float32 model, on the same float32 parameters.
      trained = self.model
      if cfg["matmul_precision"] != "float32":
        trained = jvae.mixed_precision(self.model, dtype=cfg["matmul_precision"])
      self.objective = build_bound(trained, cfg, for_training=True, data=self.data)
      if self.data.binarize == "dynamic":  # a fresh draw of every training batch
        self.objective = jvae.dynamic_binarization(self.objective)
      self.valid_bound = build_bound(self.model, cfg, for_training=False, data=self.data)
    except ValueError as err:
      raise UsageError(str(err)) from err
    sharding = None
    if mesh is not None and cfg["parallel"] == "data":
      sharding = _parallel.batch_sharding(mesh)
    try:
      self.trainer = jvae.trainer(self.objective, _optimizer(cfg, size(self.data.train)),
                                  batch_size=cfg["batch_size"],
                                  warmup_steps=cfg["warmup_steps"], beta=cfg["beta"],
                                  batch_sharding=sharding, sub_batches=cfg["sub_batches"],
                                  unroll=cfg["unroll"])
    except ValueError as err:  # options the parse-time checks let through (an edited config)
      raise UsageError(str(err)) from err
    x0 = jax.tree_util.tree_map(jnp.asarray, take(self.data.train, slice(0, 2)))
    self.init_state = jvae.fit_init(self.model, self.trainer,
                                    jvae.seed_keys(cfg["seed"], cfg["seeds"]), x0)

  def restore(self, run_dir: pathlib.Path):
    """The newest checkpoint of ``run_dir`` restored, or None if it has no complete one.

    Raises:
      RunError: it has complete checkpoints, but none restores into this config's state.
    """
    with _one_line_warnings():
      try:
        restored = checkpoint.restore_latest(run_dir / rundir.CHECKPOINTS, self.init_state)
      except checkpoint.CheckpointError as err:
        raise RunError(f"{run_dir}: no checkpoint restores into the model its config.json "
                       f"describes (was it edited?); nothing was changed: {err}") from None
    return None if restored is None else restored[1]


def _config_from_args(args) -> dict:
  return {k: getattr(args, k) for k in CONFIG_KEYS}


def _check_config(cfg: dict, n_train: int) -> None:
  if cfg["batch_size"] > n_train:
    raise UsageError(f"--batch-size {cfg['batch_size']} is larger than the training set "
                     f"({n_train} examples of {cfg['data']})")
  devices = cfg["devices"]
  if devices is not None and devices > len(jax.devices()):
    raise UsageError(f"--devices {devices}, but only {len(jax.devices())} are available")


@contextlib.contextmanager
def _one_line_warnings():
  """Shows a CheckpointWarning as one ``jvae: warning: …`` line, without the source line."""
  with warnings.catch_warnings():
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
      if issubclass(category, checkpoint.CheckpointWarning):
        files.eprint(f"jvae: warning: {message}")
      else:
        shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    yield


def _seed_params(params, i: int):
  return jax.tree_util.tree_map(lambda a: a[i], params)


def _given(args) -> set[str]:
  """The train options given on the command line (``main`` records them in ``args.given``)."""
  given = getattr(args, "given", None)
  if given is not None:
    return set(given)
  defaults = _cli.default_train_options()
  return {k for k, d in defaults.items() if getattr(args, k, d) != d}


def train(args, parser) -> int:
  """``jvae train``: a new run, or ``--resume`` of a saved one; returns the exit status."""
  given = _given(args)
  if args.resume is not None:
    return _resume(args, given)
  _cli.check_train_options(args, given)
  cfg = _config_from_args(args)
  if cfg["epochs"] is None:
    cfg["epochs"] = sum(cfg["lr_stages"]) if cfg["lr_stages"] else _cli.DEFAULT_EPOCHS
  run = _build_run(cfg)  # data, model and state: every remaining usage error, before the disk
  claim = rundir.claim(args.out, cfg)
  return _train_and_finish(run, claim.path, run.init_state, args, claim)


def _resume(args, given: set[str]) -> int:
  run_dir = files.absolute(args.resume)
  saved = complete_config(rundir.load_config(run_dir, what="--resume"), CONFIG_KEYS)
  cfg = rundir.resumed_config(saved, args, given, CONFIG_KEYS)
  run = _build_run(cfg)
  state = run.restore(run_dir)
  if state is None:
    files.eprint(f"{run_dir} has no complete checkpoint yet; starting it from epoch 0")
    state = run.init_state
  else:
    files.eprint(f"resuming {run_dir} after epoch {int(state.epoch)}")
  rundir.write_config(run_dir, cfg)
  rundir.truncate_metrics(run_dir / "metrics.jsonl", int(state.epoch))
  return _train_and_finish(run, run_dir, state, args, None)


def _build_run(cfg: dict) -> Run:
  mesh = None
  if cfg["devices"]:
    # on a CPU, its cores as --devices devices (JAX has not started yet; a choice made in the
    # environment is kept)
    _parallel.request_cpu_devices(cfg["devices"])
    _check_config(cfg, 10**12)
    axis = "data" if cfg["parallel"] == "data" else "seeds"
    mesh = _parallel.make_mesh(cfg["devices"], axis)
  return Run(cfg, mesh=mesh)


def _train_and_finish(run: Run, run_dir: pathlib.Path, state, args, claim) -> int:
  """Trains, tests and reports; cleans up after a run that fails before its first checkpoint.

  Args:
    claim: the ``rundir.Claim`` of a new run (None when resuming): what it created is removed if
      the run fails or is interrupted before its first checkpoint.
  """
  try:
    state = _fit(run, run_dir, state, args)
    summary = _finish(run, state, run_dir)
    files.write_json(run_dir / "summary.json", summary)
  except KeyboardInterrupt:
    files.eprint(rundir.interrupted_message(run_dir, claim))
    return INTERRUPTED
  except BaseException:
    if claim is not None and claim.release():
      files.eprint(f"jvae: the run failed before its first checkpoint; removed {run_dir}")
    raise
  _print_result(run.cfg, summary, run_dir)
  return 0


def _fit(run: Run, run_dir: pathlib.Path, state, args):
  """Trains up to ``cfg["epochs"]``, writing metrics and a checkpoint after every epoch."""
  cfg, mesh = run.cfg, run.mesh
  metrics_path = run_dir / "metrics.jsonl"
  train_x = jax.tree_util.tree_map(jnp.asarray, run.data.train)
  valid_x = jax.tree_util.tree_map(jnp.asarray, run.data.valid)
  if mesh is not None:
    state = _parallel.place_fit_state(state, mesh, cfg["parallel"])
    train_x = jax.device_put(train_x, _parallel.replicated(mesh))
    valid_x = jax.device_put(valid_x, _parallel.replicated(mesh))
  # Seeds split over devices: each device trains its own seeds (shard_map), in chunks.
  seed_mesh = _seed_mesh(run)
  epoch_fn = jax.jit(jvae.make_epoch_fn(run.trainer, run.valid_bound, patience=cfg["patience"],
                                        seed_chunk=args.seed_chunk, mesh=seed_mesh),
                     donate_argnums=0)
  progress = _progress(cfg["epochs"], int(state.epoch), disable=args.no_progress)

  def on_epoch(fs, record):
    with rundir.sigint_deferred():
      rundir.append_metrics(metrics_path, rundir.metrics_rows(record, cfg["seeds"]))
      checkpoint.save(run_dir / rundir.CHECKPOINTS, record["epoch"], fs,
                      metadata={"epoch": record["epoch"]})
    progress.update(1)
    progress.set_postfix({
        "steps/s": f"{record['steps_per_s']:.0f}",
        "train": f"{float(np.mean(record['train_bound'])):.2f}",
        "valid": f"{float(np.mean(record.get('valid_bound', np.nan))):.2f}"})

  try:
    state, _ = jvae.fit(run.trainer, state, train_x, valid_x, epochs=cfg["epochs"],
                        valid_bound=run.valid_bound, patience=cfg["patience"],
                        callback=on_epoch, epoch_fn=epoch_fn)
  finally:
    progress.close()
  return state


def _print_result(cfg: dict, summary: dict, run_dir: pathlib.Path) -> None:
  final, bound_name = summary["test"], summary["test_bound_name"]
  error = summary.get("test_classification_error")
  if cfg["seeds"] == 1:
    extra = "" if error is None else f", classification error {100 * error['mean']:.2f}%"
    print(f"test {bound_name}: {final['mean']:.3f} nats{extra}   (run directory: {run_dir})")
  else:
    extra = "" if error is None else (
        f"; classification error {100 * error['mean']:.2f}% ± {100 * error['std']:.2f}% (95% CI "
        f"{100 * error['ci_low']:.2f}% … {100 * error['ci_high']:.2f}%)")
    print(f"test {bound_name} over {cfg['seeds']} seeds: {final['mean']:.3f} ± {final['std']:.3f}"
          f" (95% CI {final['ci_low']:.3f} … {final['ci_high']:.3f}){extra}   (run directory: "
          f"{run_dir})")


def _progress(total: int, initial: int, *, disable: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc="epochs", unit="epoch", disable=disable,
              dynamic_ncols=True)


TEST_BATCH = 100  # test images per step of the final evaluation
TEST_CHUNK = 40  # importance samples per step: 4,000 rows of decoder outputs whatever K is


def _finish(run: Run, state, run_dir: pathlib.Path) -> dict:
  """Final test bounds of every seed's best params, their summary over seeds, and pictures."""
  cfg = run.cfg
  k = cfg["eval_samples"] or 100
  test_x = jax.tree_util.tree_map(jnp.asarray, run.data.test)
  # Seed i's key is that of a one-seed run of seed + i.
  keys = jnp.stack([jax.random.key(cfg["seed"] + i + 10**6) for i in range(cfg["seeds"])])
  if run.data.num_classes is not None:
    summary = _semi_supervised_summary(run, state, test_x, keys)
    _write_pictures(run, state, run_dir)
    return summary
  per_seed = {}
  for name, bound in _test_bounds(run, k).items():
    def one(params, key, bound=bound):
      return jvae.evaluate(bound, params, key, test_x, batch_size=TEST_BATCH)

    per_seed[name] = _per_seed(one, state.best_params, keys, _seed_mesh(run))
  main_name = f"iwae_{k}"
  kl_per_group = _test_kl_groups(run, state.best_params, test_x, keys)
  summary = {
      "test_bound_name": main_name,
      "test": jvae.summarize(per_seed[main_name]),
      "per_seed": {name: vals.tolist() for name, vals in per_seed.items()},
      "summary": {name: jvae.summarize(vals) for name, vals in per_seed.items()},
      "best_epoch": np.asarray(state.best_epoch).tolist(),
      "best_valid_bound": np.asarray(state.best_value).tolist(),
      "epochs_run": int(state.epoch),
      "nonfinite_steps": np.asarray(state.train.nonfinite).tolist(),
  }
  if kl_per_group is not None:
    summary["test_kl_groups"] = kl_per_group.tolist()
  _write_pictures(run, state, run_dir)
  return summary


def _write_pictures(run: Run, state, run_dir: pathlib.Path) -> None:
  """``samples.png`` and ``reconstructions.png`` of seed 0's best params."""
  cfg = run.cfg
  params0 = _seed_params(state.best_params, 0)
  scale = _scale(run.data.image_shape)
  _images.write_png(run_dir / "samples.png",
                    sample_grid(run, params0, jax.random.key(cfg["seed"]), 64), scale=scale)
  _images.write_png(run_dir / "reconstructions.png",
                    reconstruction_grid(run, params0, jax.random.key(cfg["seed"] + 1)),
                    scale=scale)


def _semi_supervised_summary(run: Run, state, test_x, keys) -> dict:
  """The summary of an m2 run: test U(x) and classification error, per seed and over seeds.

  ``elbo`` is the unlabelled bound U(x) (y summed out; the validation bound), the test bound;
  ``classification_error`` the fraction of test points whose argmax q(y|x) is not their label.
  """
  metrics = {"elbo": run.valid_bound, "classification_error": _semi.classification_error(run.model)}
  per_seed = {}
  for name, metric in metrics.items():
    def one(params, key, metric=metric):
      return jvae.evaluate(metric, params, key, test_x, batch_size=TEST_BATCH)

    per_seed[name] = _per_seed(one, state.best_params, keys, _seed_mesh(run))
  summary = {name: jvae.summarize(vals) for name, vals in per_seed.items()}
  return {
      "test_bound_name": "elbo",
      "test": summary["elbo"],
      "test_classification_error": summary["classification_error"],
      "per_seed": {name: vals.tolist() for name, vals in per_seed.items()},
      "summary": summary,
      "num_labels": int(np.sum(np.asarray(run.data.train.mask))),
      "classifier_weight": classifier_weight(run.cfg, run.data),
      "best_epoch": np.asarray(state.best_epoch).tolist(),
      "best_valid_bound": np.asarray(state.best_value).tolist(),
      "epochs_run": int(state.epoch),
      "nonfinite_steps": np.asarray(state.train.nonfinite).tolist(),
  }


def _test_kl_groups(run: Run, best_params, test_x, keys):
  """``(seeds, G)`` mean test KL per latent group (``jvae.kl_groups``), or None without groups."""
  f = jvae.kl_groups(run.model)
  try:
    jax.eval_shape(f, _seed_params(best_params, 0), keys[0],
                   jax.tree_util.tree_map(lambda a: a[:2], test_x))
  except ValueError:
    return None

  def one(params, key):
    return jvae.evaluate(f, params, key, test_x, batch_size=TEST_BATCH)

  return _per_seed(one, best_params, keys, _seed_mesh(run))


def _test_bounds(run: Run, k: int) -> dict:
  """The final test's bounds: the ELBO and IWAE_K, whose value is drawn ``TEST_CHUNK`` samples
  at a time (``jvae.log_marginal``): memory bounded whatever K is."""
  return {"elbo": run.valid_bound if run.cfg["bound"] == "elbo" else
          jvae.elbo(run.model, kl="sample"),
          f"iwae_{k}": jvae.log_marginal(run.model, num_samples=k, chunk_size=TEST_CHUNK)}


def _seed_mesh(run: Run):
  """The mesh the seeds are split over (``--parallel seeds``), else None."""
  return run.mesh if run.mesh is not None and run.cfg["parallel"] == "seeds" else None


def _per_seed_program(one, mesh=None):
  """``(params, keys) -> one(params_i, key_i)`` of every seed i, one seed at a time
  (``lax.map``, one jitted program): the final test's memory is one seed's, however many seeds
  the run trained. With the seeds split over ``mesh``, each device tests its own seeds so (no
  seed's parameters leave its device)."""
  def seeds(p, k):
    return jax.lax.map(lambda a: one(*a), (p, k))

  if mesh is not None:
    axis = mesh.axis_names[0]
    seeds = jax.shard_map(seeds, mesh=mesh, in_specs=(PartitionSpec(axis), PartitionSpec(axis)),
                          out_specs=PartitionSpec(axis), check_vma=False)
  return jax.jit(seeds)


def _per_seed(one, params, keys, mesh=None) -> np.ndarray:
  return np.asarray(_per_seed_program(one, mesh)(params, keys))


def _scale(image_shape) -> int:
  return max(1, 56 // image_shape[0])


def sample_grid(run: Run, params, key, n: int) -> np.ndarray:
  """The uint8 picture of ``n`` draws from the run's model (``samples.png``, ``jvae sample``).

  * Unconditional models: ``model.generate(params, key, n)``, the means of p(x|z), z ~ p(z),
    eight to a row.
  * ``cvae`` on class labels: ``ceil(n / classes)`` draws per class, one row per class (0 at the
    top), from :func:`jvae.io.conditional_data.class_conditional_grid`.
  * ``cvae`` on quadrants: completions of ``n`` test images spread over the test set: each
    image's observed quadrants c with the mean of p(x|z, c), z ~ p(z|c), in the rest.
  * ``m2``: ``ceil(n / classes)`` means of p(x|y, z), z ~ N(0, I), per class y, a row per class.
  """
  model, data = run.model, run.data
  if data.num_classes is not None:  # m2: p(x|y, z), z ~ N(0, I), a row per class y
    k = data.num_classes
    per_class = -(-n // k)
    y = np.repeat(np.arange(k, dtype=np.int32), per_class)
    x = np.asarray(jax.jit(model.generate)(params, key, jnp.asarray(y)))
    return _images.tile(x.reshape(len(y), *data.image_shape), ncols=per_class)
  if data.conditioning == "label":
    k = data.cond_dim
    per_class = -(-n // k)
    images = _cdata.class_conditional_grid(model, params, key, k, per_class, data.image_shape)
    return _images.tile(images, ncols=per_class)
  if data.conditioning == "quadrants":
    c = np.asarray(take(data.test, _images.spread_indices(size(data.test), n)).c)
    x = np.asarray(jax.jit(model.generate)(params, key, jnp.asarray(c)))
    return _images.tile(_cdata.merge_quadrants(x, c, data.mask))
  x = np.asarray(jax.jit(lambda params, key: model.generate(params, key, n))(params, key))
  return _images.tile(x.reshape(n, *data.image_shape))


def reconstruction_grid(run: Run, params, key) -> np.ndarray:
  """The labelled uint8 picture of ``reconstructions.png``.

  Row "data": 16 test images spread over the test set; row "recon": ``model.reconstruct``, the
  mean of p(x|z) at z ~ q(z|x) (for a cvae, of p(x|z, c) at z ~ q(z|x, c); for m2, of
  p(x|ŷ, z) at z ~ q(z|x, ŷ), ŷ the classifier's label). For quadrant
  completion both rows show whole images: the observed quadrants c with the true pixels x, and c
  with the model's x.
  """
  data = run.data
  batch = take(data.test, _images.spread_indices(size(data.test), NUM_RECONSTRUCTIONS))
  recon = np.asarray(jax.jit(run.model.reconstruct)(
      params, key, jax.tree_util.tree_map(jnp.asarray, batch)))
  if data.conditioning == "quadrants":
    truth = _cdata.merge_quadrants(batch.x, batch.c, data.mask)
    recon = _cdata.merge_quadrants(recon, batch.c, data.mask)
  else:
    truth = np.asarray(data_of(batch))
  h, w = data.image_shape
  both = np.concatenate([truth.reshape(-1, h, w), recon.reshape(-1, h, w)])
  return _images.label_rows(_images.tile(both, ncols=len(truth)), ["data", "recon"],
                            cell_height=h)


def load_run(run_dir: pathlib.Path):
  """``(Run, FitState)`` of a run directory's config and newest complete checkpoint.

  Raises:
    RunError: the directory has no complete checkpoint, or none restores.
  """
  run_dir = files.absolute(run_dir)
  cfg = complete_config(rundir.load_config(run_dir, what="run directory"), CONFIG_KEYS)
  run = Run({**cfg, "devices": None})
  state = run.restore(run_dir)
  if state is None:
    raise RunError(f"{run_dir} has no complete checkpoint yet")
  return run, state


def _seed_indices(cfg, seed_index):
  if seed_index is None:
    return list(range(cfg["seeds"]))
  if seed_index >= cfg["seeds"]:
    raise UsageError(f"--seed-index {seed_index}: the run has {cfg['seeds']} seed(s)")
  return [seed_index]


def evaluate_run(args, parser) -> int:
  from tqdm.auto import tqdm

  run, state = load_run(args.run_dir)
  x = run.data.split(args.split)
  if args.limit:
    x = take(x, slice(0, args.limit))
  semi = run.data.num_classes is not None
  if semi:
    bound = jax.jit(_semi.unlabelled_log_marginal(run.model, num_samples=args.num_samples,
                                                  chunk_size=args.chunk_size,
                                                  return_stderr=True))
  else:
    probe = jax.tree_util.tree_map(jnp.asarray, take(x, slice(0, 1)))
    bound = _inference.eval_estimate(run, args, _seed_params(state.best_params, 0), probe)
  error = jax.jit(_semi.classification_error(run.model)) if semi else None
  results = []
  for i in _seed_indices(run.cfg, args.seed_index):
    params = _seed_params(state.best_params, i)
    key = jax.random.key(run.cfg["seed"] + 2 * 10**6 + i)
    values, stderrs, wrong = [], [], []
    batches = range(0, size(x), args.batch_size)
    for j, start in enumerate(tqdm(batches, desc=f"seed {i}", disable=args.no_progress)):
      batch = jax.tree_util.tree_map(jnp.asarray, take(x, slice(start, start + args.batch_size)))
      v, se = bound(params, jax.random.fold_in(key, j), batch)
      values.append(np.asarray(v))
      stderrs.append(np.asarray(se))
      if error is not None:
        wrong.append(np.asarray(error(params, key, batch)))
    row = {"seed_index": i, **_eval_row(np.concatenate(values), np.concatenate(stderrs))}
    if error is not None:
      row["classification_error"] = float(np.mean(np.concatenate(wrong)))
    results.append(row)
  out = {"split": args.split, "method": args.method, "per_seed": results}
  if args.method == "ais":
    out.update(ais_steps=args.ais_steps, ais_chains=args.ais_chains, ais_init=args.ais_init)
  else:
    out["num_samples"] = args.num_samples
  if len(results) > 1:
    out["summary"] = jvae.summarize([r["log_likelihood"] for r in results])
    if semi:
      out["classification_error_summary"] = jvae.summarize(
          [r["classification_error"] for r in results])
  print(files.dumps(out))
  return 0


EVAL_KEYS = ("seed_index", "log_likelihood", "nll", "mc_stderr", "stderr_over_images", "examples")


def _eval_row(values: np.ndarray, stderrs: np.ndarray) -> dict:
  """One seed's result: the mean estimate over N images and its two standard errors.

  ``mc_stderr`` is the Monte-Carlo error of the estimate for these images, sqrt(Σ se_i²) / N from
  each image's importance-sampling error se_i; ``stderr_over_images`` is the sampling error of a
  test-set mean, std(values, ddof=1) / sqrt(N) (None for one image).
  """
  n = len(values)
  over_images = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None
  return {"log_likelihood": float(values.mean()), "nll": float(-values.mean()),
          "mc_stderr": float(np.sqrt(np.sum(stderrs ** 2)) / n),
          "stderr_over_images": over_images, "examples": n}


def sample_run(args, parser) -> int:
  run, state = load_run(args.run_dir)
  (i,) = _seed_indices(run.cfg, args.seed_index)
  params = _seed_params(state.best_params, i)
  grid = sample_grid(run, params, jax.random.key(args.seed), args.n)
  out = files.absolute(args.out)
  _images.write_png(out, grid, scale=_scale(run.data.image_shape))
  print(files.dumps({"out": str(out), "n": args.n, "seed_index": i}))
  return 0
