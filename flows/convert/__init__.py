"""Converters of the reference implementations' weights into this codebase's models.

``from_big_vision_jet``: big_vision's Jet (``flows.convert.big_vision_jet``).
"""

from flows.convert.big_vision_jet import from_big_vision_jet

__all__ = ["from_big_vision_jet"]
