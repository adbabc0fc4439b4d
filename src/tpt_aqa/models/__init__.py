"""Model stages of TPT, one module per stage of the data flow (docs/method.md §2).

Shape legend used in every docstring and reshape comment:

    B  batch (videos, or pairs in the pair stage)
    M  exemplars per query at evaluation
    T  clips per video
    L  frames per clip
    C  encoder width (``encoder.out_dim``; 1024 for I3D)
    D  model width (``d_model``)
    K  queries, i.e. temporal parts
    G  score groups
    Y  decoder layers

Flow: clips ``(B,T,3,L,H,W)`` or features ``(B,T,C)`` → encoder ``(B,T,C)`` → parser (the temporal
parsing decoder, or a pooling ablation) → parts ``(B,K,D)`` + attention ``(B,Y,T,K)`` → pair stage
``(B,D)`` → heads ``(B,G)`` logits and ``(B,G)`` offsets.
"""

from tpt_aqa.models.adaptive import (
    MonotoneAlignParser,
    SlotCompetitionParser,
    SoftBoundaryParser,
)
from tpt_aqa.models.decoder import TemporalParsingDecoder
from tpt_aqa.models.encoders import PrecomputedEncoder
from tpt_aqa.models.heads import GroupHeads
from tpt_aqa.models.i3d import I3DEncoder, InceptionI3d
from tpt_aqa.models.i3d_weights import I3DWeightsError, load_i3d_weights
from tpt_aqa.models.pair import PairStage
from tpt_aqa.models.parsers import AdaptivePoolParser, MeanPoolParser, TemporalConvParser
from tpt_aqa.models.tpt import TPT, Parsed, TPTOutput

__all__ = [
    "TPT",
    "AdaptivePoolParser",
    "GroupHeads",
    "I3DEncoder",
    "I3DWeightsError",
    "InceptionI3d",
    "MeanPoolParser",
    "MonotoneAlignParser",
    "PairStage",
    "Parsed",
    "PrecomputedEncoder",
    "SlotCompetitionParser",
    "SoftBoundaryParser",
    "TPTOutput",
    "TemporalConvParser",
    "TemporalParsingDecoder",
    "load_i3d_weights",
]
