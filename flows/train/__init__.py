"""Training: optax optimizers, jit-compiled steps, the loop and checkpoints (data parallelism:
``flows.sharding``, shared with ``flows.evaluation``).

The trainer knows nothing about a model's internals: it builds a model with
``flows.models.build_model`` and uses the ``DensityModel`` interface; the loss is
``loss_fn(model, batch, key) -> (loss, metrics)`` (``objectives.density_loss``).
"""
