"""flows: exact-likelihood normalizing flows (Glow, Jet, TarFlow) in JAX and Flax NNX.

Convention (everywhere): forward maps data to latent, ``z, log_det = f(x)``, and
``log p(x) = log p_Z(z) + log_det``. Log-determinants are per example.
"""

from flows.models import DensityModel, Glow, Jet, TarFlow, build_model, register_model

__all__ = ["DensityModel", "Glow", "Jet", "TarFlow", "build_model", "register_model"]
