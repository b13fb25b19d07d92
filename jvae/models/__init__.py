"""Layer 3: the model contract and the families that meet it, networks and presets."""

from jvae.models import oracles
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.models.presets import PRESETS, burda2015, kingma2014, mlp_vae
from jvae.models.vae import VAE

__all__ = ["VAE", "MLP", "Encoder", "Decoder", "PRESETS", "burda2015", "kingma2014", "mlp_vae",
           "oracles"]
