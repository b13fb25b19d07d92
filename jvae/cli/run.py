"""What the ``jvae`` subcommands do: a training run directory and the tools that read it.

A run directory holds ``config.json``, ``metrics.jsonl`` (a line per epoch and seed),
``checkpoints/ckpt_*`` (Orbax, one per epoch, verified by a manifest), ``summary.json``,
``samples.png`` and ``reconstructions.png``.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from jvae.cli import args as _cli
from jvae.io import checkpoint, files
from jvae.io import data as jdata
from jvae.io import images as _images
from jvae.training import parallel as _parallel
from jvae.io.data import DataIntegrityError

__all__ = ["DataIntegrityError", "Run", "UsageError", "build_bound", "build_model"]

CONFIG_KEYS = ("data", "model", "hidden", "latent_dim", "posterior", "iaf_steps", "bound",
               "num_samples", "groups", "alpha", "elbo_weight", "kl", "estimator",
               "warmup_steps", "beta", "free_bits", "free_bits_groups", "epochs", "batch_size",
               "lr", "optimizer", "patience", "seed", "seeds", "devices", "parallel",
               "eval_samples")


class UsageError(ValueError):
  """An impossible combination of options: reported as a usage error, not a traceback."""


def build_model(cfg: dict, event_shape) -> jvae.VAE:
  """The model a config describes."""
  kwargs = {"event_shape": tuple(event_shape), "posterior": cfg["posterior"],
            "iaf_steps": cfg["iaf_steps"]}
  if cfg["latent_dim"] is not None:
    kwargs["latent_dim"] = cfg["latent_dim"]
  if cfg["model"] == "mlp":
    kwargs.setdefault("latent_dim", 8)
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
    restored = checkpoint.restore_latest(run_dir / "checkpoints", self.init_state)
    return None if restored is None else restored[1]


def _config_from_args(args) -> dict:
  return {k: getattr(args, k) for k in CONFIG_KEYS}


def _check_config(cfg: dict, n_train: int) -> None:
  if cfg["batch_size"] > n_train:
    raise UsageError(f"--batch-size {cfg['batch_size']} is larger than the training set "
                     f"({n_train} examples of {cfg['data']})")
  if cfg["posterior"] == "iaf" and cfg["kl"] == "analytic":
    raise UsageError("--kl analytic has no closed form for --posterior iaf; use --kl sample")
  devices = cfg["devices"]
  if devices is not None and devices > len(jax.devices()):
    raise UsageError(f"--devices {devices}, but only {len(jax.devices())} are available")
  if devices and cfg["parallel"] == "seeds" and cfg["seeds"] % devices:
    raise UsageError(f"--parallel seeds needs --seeds ({cfg['seeds']}) to be a multiple of "
                     f"--devices ({devices})")
  if devices and cfg["parallel"] == "data" and cfg["batch_size"] % devices:
    raise UsageError(f"--parallel data needs --batch-size ({cfg['batch_size']}) to be a "
                     f"multiple of --devices ({devices})")


def _metrics_rows(record: dict, num_seeds: int) -> list[dict]:
  rows = []
  for i in range(num_seeds):
    row = {"epoch": record["epoch"], "seed_index": i, "seconds": record["seconds"],
           "steps_per_s": record["steps_per_s"]}
    for key, value in record.items():
      if isinstance(value, np.ndarray) and value.shape == (num_seeds,):
        row[key] = value[i].item()
    rows.append(row)
  return rows


def _truncate_metrics(path: pathlib.Path, last_epoch: int) -> None:
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines()
          if line.strip() and json.loads(line)["epoch"] <= last_epoch]
  path.write_text("".join(line + "\n" for line in keep))


def _seed_params(params, i: int):
  return jax.tree_util.tree_map(lambda a: a[i], params)


def train(args, parser) -> int:
  if args.resume is not None:
    run_dir = args.resume
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
      raise UsageError(f"--resume {run_dir}: no config.json there")
    cfg = json.loads(cfg_path.read_text())
    if args.epochs is not None:
      cfg["epochs"] = args.epochs
  else:
    cfg = _config_from_args(args)
    if cfg["epochs"] is None:
      cfg["epochs"] = _cli.DEFAULT_EPOCHS
    run_dir = args.out or pathlib.Path("runs") / files.now_stamp()
    if (run_dir / "config.json").exists():
      raise UsageError(f"{run_dir} already holds a run; use --resume {run_dir} or another --out")
  mesh = None
  if cfg["devices"]:
    _check_config(cfg, 10**12)
    axis = "data" if cfg["parallel"] == "data" else "seeds"
    mesh = _parallel.make_mesh(cfg["devices"], axis)
  run = Run(cfg, mesh=mesh)
  run_dir.mkdir(parents=True, exist_ok=True)
  files.write_json(run_dir / "config.json", cfg)

  state = run.init_state
  if args.resume is not None:
    restored = run.restore(run_dir)
    if restored is not None:
      state = restored
    files.eprint(f"resuming {run_dir} after epoch {int(state.epoch)}")
  metrics_path = run_dir / "metrics.jsonl"
  _truncate_metrics(metrics_path, int(state.epoch))

  train_x = jnp.asarray(run.data.train)
  valid_x = jnp.asarray(run.data.valid)
  epoch_fn = None
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
    rows = _metrics_rows(record, cfg["seeds"])
    with metrics_path.open("a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    checkpoint.save(run_dir / "checkpoints", record["epoch"], fs,
                    metadata={"epoch": record["epoch"]})
    progress.update(1)
    progress.set_postfix({
        "steps/s": f"{record['steps_per_s']:.0f}",
        "train": f"{float(np.mean(record['train_bound'])):.2f}",
        "valid": f"{float(np.mean(record.get('valid_bound', np.nan))):.2f}"})

  state, _ = jvae.fit(run.trainer, state, train_x, valid_x, epochs=cfg["epochs"],
                      valid_bound=run.valid_bound, patience=cfg["patience"], callback=on_epoch,
                      epoch_fn=epoch_fn)
  progress.close()
  summary = _finish(run, state, run_dir)
  files.write_json(run_dir / "summary.json", summary)
  final = summary["test"]
  bound_name = summary["test_bound_name"]
  if cfg["seeds"] == 1:
    print(f"test {bound_name}: {final['mean']:.3f} nats   (run directory: {run_dir})")
  else:
    print(f"test {bound_name} over {cfg['seeds']} seeds: {final['mean']:.3f} ± {final['std']:.3f}"
          f" (95% CI {final['ci_low']:.3f} … {final['ci_high']:.3f})   (run directory: "
          f"{run_dir})")
  return 0


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

    keys = jax.random.split(jax.random.key(cfg["seed"] + 10**6), cfg["seeds"])
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
  _images.write_png(run_dir / "reconstructions.png",
                    _reconstruction_grid(run.model, params0, jax.random.key(cfg["seed"] + 1),
                                         np.asarray(run.data.test[:16]), run.data.image_shape),
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
  q = model.apply(params, jnp.asarray(x), method=jvae.VAE.encode)
  z = q.sample(seed=key)
  recon = np.asarray(model.apply(params, z, method=jvae.VAE.decode).mean())
  both = np.concatenate([x.reshape(-1, *image_shape), recon.reshape(-1, *image_shape)])
  return _images.tile(both, ncols=len(x))


def _load_run(run_dir: pathlib.Path):
  cfg_path = run_dir / "config.json"
  if not cfg_path.exists():
    raise UsageError(f"{run_dir} is not a run directory (no config.json)")
  cfg = json.loads(cfg_path.read_text())
  cfg = {**cfg, "devices": None}
  run = Run(cfg)
  state = run.restore(run_dir)
  if state is None:
    raise UsageError(f"{run_dir} has no usable checkpoint")
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
    values, stderrs = np.concatenate(values), np.concatenate(stderrs)
    results.append({"seed_index": i, "log_likelihood": float(values.mean()),
                    "nll": float(-values.mean()),
                    "stderr": float(np.sqrt(np.sum(stderrs ** 2)) / len(values)),
                    "examples": len(values)})
  out = {"split": args.split, "num_samples": args.num_samples, "per_seed": results}
  if len(results) > 1:
    out["summary"] = jvae.summarize([r["log_likelihood"] for r in results])
  print(json.dumps(out))
  return 0


def sample_run(args, parser) -> int:
  run, state = _load_run(args.run_dir)
  (i,) = _seed_indices(run.cfg, args.seed_index)
  params = _seed_params(state.best_params, i)
  grid = _prior_grid(run.model, params, jax.random.key(args.seed), args.n, run.data.image_shape)
  _images.write_png(args.out, grid, scale=_scale(run.data.image_shape))
  print(json.dumps({"out": str(args.out), "n": args.n, "seed_index": i}))
  return 0
