"""Layer 5: pure ``init``/``step``/``epoch`` training, seeds and devices as axes."""

from jvae.training.evaluation import evaluate_pointwise
from jvae.training.seeds import FitState, fit, fit_init, make_epoch_fn, seed_keys, summarize
from jvae.training.parallel import (batch_sharding, make_mesh, place_fit_state, replicated,
                                    request_cpu_devices)
from jvae.training.schedules import (
    BURDA2015_STAGES,
    scaled_stages,
    stage_learning_rates,
    staged_learning_rate,
)
from jvae.training.steps import Trainer, TrainState, evaluate, trainer

__all__ = ["FitState", "fit", "fit_init", "make_epoch_fn", "seed_keys", "summarize",
           "batch_sharding", "make_mesh", "place_fit_state", "replicated", "request_cpu_devices",
           "Trainer", "TrainState", "evaluate", "evaluate_pointwise", "trainer",
           "BURDA2015_STAGES", "scaled_stages", "stage_learning_rates", "staged_learning_rate"]
