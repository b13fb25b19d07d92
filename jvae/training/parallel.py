"""Devices as an axis: data-parallel and seed-parallel placement on a ``jax.sharding.Mesh``.

Nothing here schedules work: arrays are placed with ``NamedSharding`` and XLA partitions the
compiled program (GSPMD), inserting the gradient all-reduce for data parallelism. Multi-host runs
call ``jax.distributed.initialize()`` first and use the same code (``jax.devices()`` then lists
every host's devices).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("data", "seeds")


def request_cpu_devices(n: int) -> bool:
  """Gives JAX's CPU platform ``n`` devices, if JAX has not started and nobody chose already.

  The CPU's cores as ``n`` devices let a mesh split work (e.g. seeds, ``make_epoch_fn(...,
  mesh=...)``) into programs that run concurrently. The choice must precede JAX's first
  computation; one made in the environment (``JAX_NUM_CPU_DEVICES``, or ``XLA_FLAGS`` with
  ``--xla_force_host_platform_device_count``) is kept. Other platforms (GPU, TPU) are unaffected.

  Returns:
    Whether the number of CPU devices was set here.
  """
  if ("JAX_NUM_CPU_DEVICES" in os.environ
      or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", int(n))
  except RuntimeError:  # JAX has started: its devices stay as they are
    return False
  return True


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (default: all)."""
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices but {len(devices)} are available "
                     f"({devices[0].platform}); for N CPU devices set JAX_NUM_CPU_DEVICES=N "
                     "before JAX starts (or call jvae.request_cpu_devices(N) first)")
  return Mesh(np.asarray(devices[:n]), (axis,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shard a batch's leading axis over the mesh (data parallelism)."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def place_fit_state(state, mesh: Mesh, mode: str):
  """Place a :class:`jvae.FitState`: replicated (``"data"``) or split along seeds (``"seeds"``)."""
  if mode not in MODES:
    raise ValueError(f"unknown parallel mode {mode!r}; expected one of {MODES}")
  if mode == "data":
    return jax.device_put(state, replicated(mesh))
  n = state.best_value.shape[0]
  size = mesh.devices.size
  if n % size:
    raise ValueError(f"seed-parallel training needs the number of seeds ({n}) to be a multiple "
                     f"of the number of devices ({size})")
  seeds = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  shardings = jax.tree_util.tree_map(lambda a: seeds if a.ndim else replicated(mesh), state)
  return jax.device_put(state, shardings)
