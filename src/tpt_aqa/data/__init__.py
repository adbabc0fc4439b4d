"""Data: sample tables, exemplar pairing, typed batches and one datamodule per benchmark."""

from tpt_aqa.data.aqa7 import AQA7DataModule
from tpt_aqa.data.base import AQADataModule, SampleTable
from tpt_aqa.data.batch import EvalBatch, PairBatch, Videos
from tpt_aqa.data.clips import ClipSampler
from tpt_aqa.data.features import FeaturesDataModule
from tpt_aqa.data.finediving import FineDivingDataModule
from tpt_aqa.data.jigsaws import JIGSAWSDataModule
from tpt_aqa.data.mtl_aqa import MTLAQADataModule
from tpt_aqa.data.samplers import ExemplarPairSampler, choose_eval_exemplars
from tpt_aqa.data.synthetic import SyntheticDataModule
from tpt_aqa.data.synthetic_video import SyntheticVideoDataModule
from tpt_aqa.data.transforms import VideoTransform
from tpt_aqa.data.video_base import VideoDataModule

__all__ = [
    "AQA7DataModule",
    "AQADataModule",
    "ClipSampler",
    "EvalBatch",
    "ExemplarPairSampler",
    "FeaturesDataModule",
    "FineDivingDataModule",
    "JIGSAWSDataModule",
    "MTLAQADataModule",
    "PairBatch",
    "SampleTable",
    "SyntheticDataModule",
    "SyntheticVideoDataModule",
    "VideoDataModule",
    "VideoTransform",
    "Videos",
    "choose_eval_exemplars",
]
