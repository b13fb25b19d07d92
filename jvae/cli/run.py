"""What the ``jvae`` subcommands do: a training run directory and the tools that read it.

A run directory holds ``config.json``, ``metrics.jsonl`` (a line per epoch and seed),
``checkpoints/ckpt_*`` (Orbax, one per epoch, the last 3 kept, verified by a manifest),
``summary.json``, ``samples.png`` and ``reconstructions.png``. Every JSON file is strict JSON, a
non-finite number written as ``null``. How run directories are claimed, resumed and cleaned up
is in :mod:`jvae.cli.rundir`.
"""

from __future__ import annotations

import contextlib
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from jvae.cli import args as _cli
from jvae.cli import rundir
from jvae.io import checkpoint, files
from jvae.io import data as jdata
from jvae.io import images as _images
from jvae.training import parallel as _parallel
from jvae.io.data import DataIntegrityError

__all__ = ["DataIntegrityError", "Run", "RunError", "UsageError", "build_bound", "build_model"]

CONFIG_KEYS = ("data", "model", "hidden", "latent_dim", "posterior", "iaf_steps", "bound",
               "num_samples", "groups", "alpha", "elbo_weight", "kl", "estimator",
               "warmup_steps", "beta", "free_bits", "free_bits_groups", "epochs", "batch_size",
               "lr", "optimizer", "patience", "seed", "seeds", "devices", "parallel",
               "eval_samples")


UsageError = _cli.UsageError
INTERRUPTED = 130  # the exit status of a run stopped by SIGINT (128 + 2), as shells report it
NUM_RECONSTRUCTIONS = 16


class RunError(RuntimeError):
  """A run directory that cannot be used as asked (e.g. none of its checkpoints restores)."""


def build_model(cfg: dict, event_shape) -> jvae.VAE:
  """The model a config describes."""
  kwargs = {"event_shape": tuple(event_shape), "posterior": cfg["posterior"],
            "iaf_steps": cfg["iaf_steps"]}
  if cfg["latent_dim"] is not None:
    kwargs["latent_dim"] = cfg["latent_dim"]
  if cfg["model"] == "mlp":
    kwargs.setdefault("latent_dim", _cli.LATENT_DIMS["mlp"])
    return jvae.mlp_vae(hidden=tuple(cfg["hidden"] or (128, 64)), **kwargs)
  return jvae.PRESETS[cfg["model"]](**kwargs)


def build_bound(model, cfg: dict, *, for_training: bool):
  """The objective a config trains (``for_training``) or validates with (no free bits)."""
  bound, k, est = cfg["bound"], cfg["num_samples"], cfg["estimator"]
  if bound == "elbo":
    kl = cfg["kl"] or ("sample" if cfg["posterior"] == "iaf" or est != "reparam" else "analytic")
    if not for_training:
      return jvae.elbo(model, num_samples=k, kl=kl)
    return jvae.elbo(model, num_samples=k, kl=kl, estimator=est, free_bits=cfg["free_bits"],
                     free_bits_groups=cfg["free_bits_groups"])
  if cfg["free_bits"] is not None:
    raise ValueError("--free-bits applies to --bound elbo only")
  if bound == "iwae":
    return jvae.iwae(model, num_samples=k, estimator=est)
  if bound == "renyi":
    return jvae.renyi(model, alpha=cfg["alpha"], num_samples=k, estimator=est)
  if bound == "ciwae":
    return jvae.ciwae(model, num_samples=k, elbo_weight=cfg["elbo_weight"], estimator=est)
  if bound == "miwae":
    return jvae.miwae(model, num_groups=cfg["groups"], num_samples=k, estimator=est)
  return jvae.piwae(model, num_groups=cfg["groups"], num_samples=k, estimator=est)


def _optimizer(cfg: dict):
  return {"adam": optax.adam, "adamax": optax.adamax}[cfg["optimizer"]](cfg["lr"])


class Run:
  """Everything built from a run's config: data, model, trainer and a template state."""

  def __init__(self, cfg: dict, *, mesh=None):
    self.cfg = cfg
    self.mesh = mesh
    self.data = jdata.load(cfg["data"])
    _check_config(cfg, self.data.train.shape[0])
    self.model = build_model(cfg, self.data.event_shape)
    try:
      self.objective = build_bound(self.model, cfg, for_training=True)
      self.valid_bound = build_bound(self.model, cfg, for_training=False)
    except ValueError as err:
      raise UsageError(str(err)) from err
    sharding = None
    if mesh is not None and cfg["parallel"] == "data":
      sharding = _parallel.batch_sharding(mesh)
    self.trainer = jvae.trainer(self.objective, _optimizer(cfg), batch_size=cfg["batch_size"],
                                warmup_steps=cfg["warmup_steps"], beta=cfg["beta"],
                                batch_sharding=sharding)
    x0 = jnp.asarray(self.data.train[:2])
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
    cfg["epochs"] = _cli.DEFAULT_EPOCHS
  run = _build_run(cfg)  # data, model and state: every remaining usage error, before the disk
  claim = rundir.claim(args.out, cfg)
  return _train_and_finish(run, claim.path, run.init_state, args, claim)


def _resume(args, given: set[str]) -> int:
  run_dir = files.absolute(args.resume)
  saved = rundir.load_config(run_dir, what="--resume")
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
  train_x = jnp.asarray(run.data.train)
  valid_x = jnp.asarray(run.data.valid)
  if mesh is not None:
    state = _parallel.place_fit_state(state, mesh, cfg["parallel"])
    train_x = jax.device_put(train_x, _parallel.replicated(mesh))
    valid_x = jax.device_put(valid_x, _parallel.replicated(mesh))
  # A seed axis sharded over devices is vmapped whole: chunking it would reshard it.
  seed_chunk = None if mesh is not None and cfg["parallel"] == "seeds" else args.seed_chunk
  epoch_fn = jax.jit(jvae.make_epoch_fn(run.trainer, run.valid_bound, patience=cfg["patience"],
                                        seed_chunk=seed_chunk), donate_argnums=0)
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
  if cfg["seeds"] == 1:
    print(f"test {bound_name}: {final['mean']:.3f} nats   (run directory: {run_dir})")
  else:
    print(f"test {bound_name} over {cfg['seeds']} seeds: {final['mean']:.3f} ± {final['std']:.3f}"
          f" (95% CI {final['ci_low']:.3f} … {final['ci_high']:.3f})   (run directory: "
          f"{run_dir})")


def _progress(total: int, initial: int, *, disable: bool):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc="epochs", unit="epoch", disable=disable,
              dynamic_ncols=True)


def _finish(run: Run, state, run_dir: pathlib.Path) -> dict:
  """Final test bounds of every seed's best params, their summary over seeds, and pictures."""
  cfg = run.cfg
  k = cfg["eval_samples"] or 100
  test_x = jnp.asarray(run.data.test)
  bounds = {"elbo": run.valid_bound if cfg["bound"] == "elbo" else
            jvae.elbo(run.model, kl="sample"),
            f"iwae_{k}": jvae.iwae(run.model, num_samples=k)}
  per_seed = {}
  for name, bound in bounds.items():
    def one(params, key, bound=bound):
      return jvae.evaluate(bound, params, key, test_x, batch_size=100)

    # Seed i's key is that of a one-seed run of seed + i.
    keys = jnp.stack([jax.random.key(cfg["seed"] + i + 10**6) for i in range(cfg["seeds"])])
    per_seed[name] = np.asarray(jax.jit(jax.vmap(one))(state.best_params, keys))
  main_name = f"iwae_{k}"
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
  params0 = _seed_params(state.best_params, 0)
  _images.write_png(run_dir / "samples.png",
                    _prior_grid(run.model, params0, jax.random.key(cfg["seed"]), 64,
                                run.data.image_shape), scale=_scale(run.data.image_shape))
  test = np.asarray(run.data.test)
  examples = test[_images.spread_indices(len(test), NUM_RECONSTRUCTIONS)]
  _images.write_png(run_dir / "reconstructions.png",
                    _reconstruction_grid(run.model, params0, jax.random.key(cfg["seed"] + 1),
                                         examples, run.data.image_shape),
                    scale=_scale(run.data.image_shape))
  return summary


def _scale(image_shape) -> int:
  return max(1, 56 // image_shape[0])


def prior_means(model, params, key, n: int) -> np.ndarray:
  """Means of p(x|z) for n draws z ~ p(z): ``(n, *event)``."""
  z = model.prior_distribution(model.latent_dim).sample(seed=key, sample_shape=(n,))
  return np.asarray(model.apply(params, z, method=jvae.VAE.decode).mean())


def _prior_grid(model, params, key, n, image_shape):
  return _images.tile(prior_means(model, params, key, n).reshape(n, *image_shape))


def _reconstruction_grid(model, params, key, x, image_shape):
  """Row "data": the images ``x``; row "recon": the means of p(x|z), z ~ q(z|x)."""
  q = model.apply(params, jnp.asarray(x), method=jvae.VAE.encode)
  z = q.sample(seed=key)
  recon = np.asarray(model.apply(params, z, method=jvae.VAE.decode).mean())
  both = np.concatenate([x.reshape(-1, *image_shape), recon.reshape(-1, *image_shape)])
  return _images.label_rows(_images.tile(both, ncols=len(x)), ["data", "recon"],
                            cell_height=image_shape[0])


def _load_run(run_dir: pathlib.Path):
  run_dir = files.absolute(run_dir)
  cfg = rundir.load_config(run_dir, what="run directory")
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

  run, state = _load_run(args.run_dir)
  x = np.asarray(getattr(run.data, args.split))
  if args.limit:
    x = x[: args.limit]
  bound = jax.jit(jvae.log_marginal(run.model, num_samples=args.num_samples,
                                    chunk_size=args.chunk_size, return_stderr=True))
  results = []
  for i in _seed_indices(run.cfg, args.seed_index):
    params = _seed_params(state.best_params, i)
    key = jax.random.key(run.cfg["seed"] + 2 * 10**6 + i)
    values, stderrs = [], []
    batches = range(0, len(x), args.batch_size)
    for j, start in enumerate(tqdm(batches, desc=f"seed {i}", disable=args.no_progress)):
      batch = jnp.asarray(x[start:start + args.batch_size])
      v, se = bound(params, jax.random.fold_in(key, j), batch)
      values.append(np.asarray(v))
      stderrs.append(np.asarray(se))
    results.append({"seed_index": i, **_eval_row(np.concatenate(values),
                                                 np.concatenate(stderrs))})
  out = {"split": args.split, "num_samples": args.num_samples, "per_seed": results}
  if len(results) > 1:
    out["summary"] = jvae.summarize([r["log_likelihood"] for r in results])
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
  run, state = _load_run(args.run_dir)
  (i,) = _seed_indices(run.cfg, args.seed_index)
  params = _seed_params(state.best_params, i)
  grid = _prior_grid(run.model, params, jax.random.key(args.seed), args.n, run.data.image_shape)
  out = files.absolute(args.out)
  _images.write_png(out, grid, scale=_scale(run.data.image_shape))
  print(files.dumps({"out": str(out), "n": args.n, "seed_index": i}))
  return 0
