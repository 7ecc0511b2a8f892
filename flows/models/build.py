"""Model construction from ``config.model`` (the only place that maps config to classes)."""

from __future__ import annotations

from flax import nnx

from flows.models.glow import Glow
from flows.nn.conditioners import set_compute_dtype, set_remat

# Fields of config.model for Glow, with their defaults.
GLOW_CONFIG_DEFAULTS = {
    "name": "glow",
    "num_levels": 3,
    "num_steps": 8,
    "hidden_channels": 128,
    "coupling": "affine",
    "permutation": "conv1x1_lu",
    "logit_alpha": None,
    "conditional": False,  # True: p(x|y) with num_classes from the dataset
    "condition_on": "top",
    "weight_y": 0.0,
    "backprop": "autodiff",
    # Matrix-product dtype of the coupling networks: "float32", or "bfloat16" for mixed
    # precision (products rounded to bf16, summed in f32; log-dets and priors stay f32).
    "compute_dtype": "float32",
    # Recompute the coupling networks' hidden activations in the backward pass (less memory;
    # faster with bfloat16 on CPU, see flows.nn.conditioners.set_remat).
    "remat_coupling_nets": False,
}


def build_model(config, image_shape, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    if config.name != "glow":
        raise ValueError(f"unknown model.name {config.name!r}; available: 'glow'")
    kwargs = dict(
        num_levels=config.num_levels,
        num_steps=config.num_steps,
        hidden_channels=config.hidden_channels,
        coupling=config.coupling,
        permutation=config.permutation,
        num_classes=num_classes if config.conditional else None,
        condition_on=config.condition_on,
        logit_alpha=config.logit_alpha,
        rngs=rngs,
    )
    if config.backprop != "autodiff":
        kwargs["backprop"] = config.backprop
    if config.conditional and config.weight_y:
        kwargs["auxiliary_classifier"] = True
    model = Glow(tuple(image_shape), **kwargs)
    if config.compute_dtype != "float32":
        set_compute_dtype(model, config.compute_dtype)
    if config.remat_coupling_nets:
        set_remat(model, True)
    return model
