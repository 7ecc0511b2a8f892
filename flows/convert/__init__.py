"""Converters of the reference implementations' weights into ``flows`` models.

Each source has a module with ``load_checkpoint(path, image_shape, **model_fields) ->
(model, config.model dict)`` (what ``experiments.convert`` dispatches to) and a function
from the reference's in-memory weights to the model:

* ``from_ml_tarflow(state_dict, image_shape)``: apple/ml-tarflow's ``transformer_flow.Model``
  as a ``TarFlow`` (``flows.convert.ml_tarflow``).
* ``from_big_vision_jet(params, image_shape, **model_kwargs)``: big_vision's Jet ``Model``
  as a ``Jet`` (``flows.convert.big_vision_jet``).

The converted models compute the references' functions: ``log_prob(x)`` is the reference's
density of ``2x - 1`` times ``2^D`` (the unit scale), and ``inverse`` is its reverse pass;
``tests/test_convert_*.py`` check it against fixtures made with the references' own code.
Importing this package never imports PyTorch (reading a ``.pth`` does: ``.[convert]``).
"""

from flows.convert.big_vision_jet import from_big_vision_jet
from flows.convert.ml_tarflow import from_ml_tarflow

__all__ = ["from_big_vision_jet", "from_ml_tarflow"]
