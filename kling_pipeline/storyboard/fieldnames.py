"""Names and spellings of a storyboard's fields, without pydantic.

The renderer, the settings of a warm run and the models all need these; keeping them here
lets a run whose structure is known valid (see `storyboard.py`) skip importing pydantic and
building the models (~100 ms of every warm `plan`). `models.py` re-exports them, and a test
keeps REQUEST_FIELDS equal to the models' fields.
"""

from __future__ import annotations

import re

_TEMPLATE = re.compile(r"\{\{|\{%")
# The endpoint pages' own names for fields a storyboard names alike on every model: the v1.6
# pages say image_url, end_image_url and guidance_scale where v3.0 says image, end_image and
# cfg_scale. A shot may use either spelling (not both); the request is the same either way.
FIELD_ALIASES: dict[str, str] = {
    "image_url": "image", "end_image_url": "end_image", "guidance_scale": "cfg_scale"}
# The request fields a shot or the defaults may set, in models.ShotFields' order.
REQUEST_FIELDS: tuple[str, ...] = (
    "model", "prompt", "negative_prompt", "multi_prompt", "image", "end_image", "duration",
    "aspect_ratio", "sound", "cfg_scale", "mode")


def is_template(value: object) -> bool:
    return isinstance(value, str) and _TEMPLATE.search(value) is not None
