"""sift: learned and training-free audio/video token compression for omni-modal LLMs.

The public API:

- `sift.layout_of(inputs, config)` / `sift.TokenLayout`: the audio/video token layout of a Qwen2.5-Omni or
  Qwen3-Omni input in 2 s windows (`sift.build_layout`: Qwen2.5-Omni's rule, with options).
- `sift.get_compressor(name, retention=...)`: a token-selection method (`available_compressors()` lists them).
- `with sift.compress(model, compressor) as session:` applies it to a stock transformers model.
- `sift.OmniSIFTSelector`: the learned selector (`save_pretrained` / `from_pretrained`).
"""

from sift.compressors import (
    CompressionBatch,
    Compressor,
    Selection,
    available_compressors,
    get_compressor,
    register,
)
from sift.flops import active_parameters, flops, flops_ratio
from sift.layout import Frame, RowLayout, Segment, TokenLayout, Window, build_layout
from sift.models import layout_of
from sift.plugin import MODES, SUPPORTED_MODELS, CompressionSession, CompressionStats, compress
from sift.selector import OmniSIFTConfig, OmniSIFTSelector

__version__ = "0.1.0"

__all__ = [
    "build_layout",
    "layout_of",
    "TokenLayout",
    "RowLayout",
    "Segment",
    "Window",
    "Frame",
    "Compressor",
    "CompressionBatch",
    "Selection",
    "get_compressor",
    "available_compressors",
    "register",
    "compress",
    "CompressionSession",
    "CompressionStats",
    "SUPPORTED_MODELS",
    "MODES",
    "OmniSIFTSelector",
    "OmniSIFTConfig",
    "flops",
    "flops_ratio",
    "active_parameters",
]
