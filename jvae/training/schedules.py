"""Learning-rate schedules of published training protocols (layer 5).

:func:`staged_learning_rate` is the schedule of Burda et al. (2015), *Importance Weighted
Autoencoders*, §5: stage i = 0 … 7 runs 3^i passes over the training set at learning rate
1e-3 · 10^(−i/7), 3,280 passes in all. The same shape with other stage lengths (fewer passes, for a
shorter budget) keeps the decade of decay from the first stage to the last.
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

#: Epochs of each stage of Burda et al. (2015): 3^i for i = 0 … 7 (3,280 passes).
BURDA2015_STAGES = tuple(3 ** i for i in range(8))


def stage_learning_rates(lr: float, num_stages: int, *, decades: float = 1.0) -> list[float]:
  """``[lr · 10^(−decades · i / (n − 1)) for i in range(n)]``; ``[lr]`` for one stage."""
  if num_stages < 1:
    raise ValueError(f"num_stages must be >= 1, got {num_stages}")
  if num_stages == 1:
    return [float(lr)]
  return [float(lr) * 10.0 ** (-decades * i / (num_stages - 1)) for i in range(num_stages)]


def staged_learning_rate(lr: float, *, stage_epochs: Sequence[int], steps_per_epoch: int,
                         decades: float = 1.0) -> optax.Schedule:
  """A piecewise-constant learning rate over stages of whole epochs (Burda et al. 2015).

  Stage i (of n) lasts ``stage_epochs[i]`` epochs at ``lr · 10^(−decades · i / (n − 1))``; after
  the last stage the last rate stays. With ``stage_epochs=BURDA2015_STAGES`` (1, 3, …, 2187),
  ``lr=1e-3`` and one decade this is the IWAE paper's 1e-3 · 10^(−i/7) for 3^i epochs.

  The schedule is a function of optax's update count, which counts the updates applied: a step
  that :func:`jvae.trainer` skips because it was not finite does not advance it.

  Args:
    lr: the first stage's learning rate, > 0.
    stage_epochs: epochs of each stage, each >= 1.
    steps_per_epoch: optimizer steps per epoch (``N // batch_size`` for :func:`jvae.trainer`).
    decades: how many powers of ten the rate falls from the first stage to the last.

  Returns:
    An ``optax.Schedule``, ``count -> learning rate``, for e.g. ``optax.adam``.

  Raises:
    ValueError: for an empty or non-positive ``stage_epochs`` or ``steps_per_epoch`` < 1.
  """
  stages = [int(e) for e in stage_epochs]
  if not stages or any(e < 1 for e in stages):
    raise ValueError(f"stage_epochs must be one or more integers >= 1, got {list(stage_epochs)}")
  if int(steps_per_epoch) < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  if not lr > 0:
    raise ValueError(f"lr must be > 0, got {lr}")
  rates = stage_learning_rates(lr, len(stages), decades=decades)
  boundaries, end = {}, 0
  for i, epochs in enumerate(stages[:-1]):
    end += epochs * int(steps_per_epoch)
    boundaries[end] = rates[i + 1] / rates[i]
  return optax.piecewise_constant_schedule(rates[0], boundaries)


def scaled_stages(stages: Sequence[int], divisor: int) -> tuple[int, ...]:
  """Every stage ``divisor`` times shorter, rounded up to whole epochs (at least one).

  ``scaled_stages(BURDA2015_STAGES, 1)`` is the paper's schedule itself (3,280 epochs);
  ``divisor=3`` gives 1, 1, 3, …, 729 (1,094 epochs) and ``divisor=9`` 1, 1, 1, 3, …, 243 (366):
  the same learning rates in the same order, each stage still three times the one before from
  where the one-epoch floor ends.
  """
  if int(divisor) < 1:
    raise ValueError(f"divisor must be an integer >= 1, got {divisor}")
  return tuple(max(1, -(-int(s) // int(divisor))) for s in stages)
