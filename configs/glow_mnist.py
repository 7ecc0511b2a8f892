"""Glow on MNIST (8-bit, 28x28 zero-padded to 32x32 as openai/glow does).

    python -m experiments.train --config=configs/glow_mnist.py --workdir=runs/mnist

Needs MNIST prepared for TFDS (``tfds build mnist --file_format=array_record`` on a machine
with internet and TensorFlow, then copy ~/tensorflow_datasets/mnist here). Bits/dim is per
padded dimension (32*32), as in openai/glow; papers report about 1.05 for Glow-class models.
Architecture: L=3, K=32, 512 hidden channels, affine coupling, LU 1x1 conv, Adamax 1e-3 with
warmup (Glow's CIFAR-10 hyperparameters). Result: not yet measured here (no MNIST offline).
Variants: ``:smoke`` (a few steps of a tiny model; the tests run it on mocked data),
``:cond`` (label-conditioned p(x|y)).
"""

from configs.base import apply_catalog_variants, base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "mnist"
    c.data.pad_to = (32, 32)
    c.data.validation_size = 5000
    c.model.num_levels = 3
    c.model.num_steps = 32
    c.model.hidden_channels = 512
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5000
    c.train.batch_size = 64
    c.train.num_train_steps = 200_000
    c.train.ema_decay = 0.999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.eval.batch_size = 500
    apply_catalog_variants(c, arg, "glow_mnist")
    return finalize(c)
