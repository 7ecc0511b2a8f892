"""Training: optax optimizers, jit-compiled steps, the loop, checkpoints and sharding.

The trainer knows nothing about a model's internals: it builds a model with
``flows.models.build_model`` and uses the ``DensityModel`` interface; the loss is
``loss_fn(model, batch, key) -> (loss, metrics)`` (``objectives.density_loss``).
"""
