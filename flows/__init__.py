"""flows: exact-likelihood normalizing flows (Glow) in JAX and Flax NNX.

Convention (everywhere): forward maps data to latent, ``z, log_det = f(x)``, and
``log p(x) = log p_Z(z) + log_det``. Log-determinants are per example.
"""

from flows.models.glow import Glow  # noqa: E402

__all__ = ["Glow"]
