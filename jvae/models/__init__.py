"""Layer 3: the model contract and the families that meet it, networks and presets."""

from jvae.models import discrete_oracle, oracles
from jvae.models.baseline import WithBaseline, with_baseline
from jvae.models.discrete import DiscreteVAE, MixedVAE, SigmoidBeliefNet
from jvae.models.m2 import M2, Classifier, m2
from jvae.models.conditional import ConditionalVAE, cvae
from jvae.models.contract import Batch, Joint, LatentModel, Proposal
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.models.precision import MixedPrecision, mixed_precision
from jvae.models.hierarchical import HierarchicalVAE
from jvae.models.ladder import LadderVAE
from jvae.models.presets import PRESETS, burda2015, burda2015_2layer, kingma2014, lvae, mlp_vae
from jvae.models.priors import (
    ConditionalGaussianPrior,
    LearnedGaussianPrior,
    MixturePrior,
    VampPrior,
    prior_samples,
)
from jvae.models.vae import VAE

__all__ = [
    "Batch", "Joint", "LatentModel", "Proposal", "VAE", "HierarchicalVAE", "LadderVAE",
    "ConditionalVAE", "cvae", "MLP", "Encoder", "Decoder", "PRESETS", "burda2015",
    "burda2015_2layer", "kingma2014", "lvae", "mlp_vae", "oracles",
    "ConditionalGaussianPrior", "LearnedGaussianPrior", "MixturePrior", "VampPrior",
    "prior_samples", "WithBaseline", "with_baseline", "discrete_oracle",
    "DiscreteVAE", "SigmoidBeliefNet", "MixedVAE", "M2", "Classifier", "m2",
    "MixedPrecision", "mixed_precision",
]
