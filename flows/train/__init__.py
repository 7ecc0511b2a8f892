"""Training: optax optimizers, jit-compiled steps, the loop, checkpoints and sharding.

The trainer knows nothing about a model's internals: a model is any ``nnx.Module`` and a
loss is ``loss_fn(model, batch, key) -> (loss, metrics)``.
"""
