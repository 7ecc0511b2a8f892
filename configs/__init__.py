"""Experiment configs: each file but ``base.py`` (what they share) has ``get_config(arg=None)
-> ml_collections.ConfigDict``, ``arg`` naming its variants (``--config=configs/NAME.py:a,b``)."""
