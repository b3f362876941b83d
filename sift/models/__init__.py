"""The model seam: what sift knows about each omni model family, behind one small interface.

The plug-in, the audio saliency hooks and the training app never name a model class; they ask the
adapter of the model they were given (`adapter_for`). Supporting a new family (Qwen3-Omni) means one new
`OmniAdapter` and its layout reader, registered here, and nothing else.
"""

from sift.models.base import (
    OmniAdapter,
    adapter_for,
    adapter_for_config,
    layout_of,
    load_thinker,
    register_adapter,
    registered_adapters,
    thinker_config_of,
)
from sift.models.qwen2_5_omni import Qwen25OmniAdapter
from sift.models.qwen3_omni import Qwen3OmniAdapter

__all__ = [
    "OmniAdapter",
    "adapter_for",
    "adapter_for_config",
    "layout_of",
    "load_thinker",
    "register_adapter",
    "registered_adapters",
    "thinker_config_of",
    "Qwen25OmniAdapter",
    "Qwen3OmniAdapter",
]
