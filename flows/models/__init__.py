"""Model families behind one interface (``base.DensityModel``) and one registry.

Importing this package registers every family shipped with the library (``glow``, ``jet``,
``tarflow``); a new family is one module with a ``DensityModel`` subclass decorated with
``registry.register_model`` (its constructor's keyword-only parameters are its config
fields), imported here.
"""

from flows.models import (  # noqa: F401  (each registers its family)
    glow,
    jet,
    tarflow,
)
from flows.models.base import (
    DensityModel,
    is_conditional,
    sample_and_stats_compiled,
    sample_compiled,
    standard_normal_log_prob,
)
from flows.models.glow import Glow
from flows.models.jacobi import SAMPLERS, Sampler, make_sampler
from flows.models.jet import Jet
from flows.models.registry import build_model, get_family, model_families, register_model
from flows.models.tarflow import TarFlow

__all__ = [
    "SAMPLERS",
    "DensityModel",
    "Glow",
    "Jet",
    "TarFlow",
    "build_model",
    "get_family",
    "is_conditional",
    "model_families",
    "Sampler",
    "make_sampler",
    "register_model",
    "sample_and_stats_compiled",
    "sample_compiled",
    "standard_normal_log_prob",
]
