"""Inference loading for the tasks: the project-wide resolver of ``libra.pretrained``."""

from libra.pretrained import default_device as inference_device
from libra.pretrained import load_pretrained

__all__ = ["inference_device", "load_pretrained"]
