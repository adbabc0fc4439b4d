"""tpt_aqa: the Temporal Parsing Transformer (Bai et al., ECCV 2022) for action quality assessment."""

__version__ = "0.1.0"
