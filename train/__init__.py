"""The sift training application: Lightning module, data module and CLI for selector training.

Built on `sift` (layout, compressors, plug-in); see the README for the status of each piece.
"""
