"""The datamodule of benchmarks whose samples are videos: frame folders or video files (docs/method.md §8–9).

A benchmark module parses its annotations into a ``SampleTable`` (``build_table``), says where the
frames of each sample are (``source``) and, when its clips are not the sampler spread over the
whole source, which frames they take (``clip_index`` and ``frame_span``): nothing more, as a
dataset of mmaction2 implements ``load_data_list`` only. Everything storage-shaped is here: the clip
sampler and the per-view transforms, frame counts (a video file is counted once per process), the
check at setup that every source exists, reading, ``check_sample`` for ``python -m tpt_aqa.verify``
(exists → enough frames → the first and last needed frames decode), the error messages that name
the file and the fix, the feature cache (``features_root``) and how ``tpt_aqa.predict`` reads a new
video.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.cache import CacheMismatchError, check_manifest
from tpt_aqa.data.base import VIEWS, AQADataModule
from tpt_aqa.data.clips import ClipSampler, unique_frames
from tpt_aqa.data.transforms import VideoTransform, frames_to_clips
from tpt_aqa.data.video import PREPARE_COMMAND, VideoReadError, count_frames, read_frames


class MissingSourceError(VideoReadError, FileNotFoundError):
    """A sample's frame folder or video file, or the folder holding them all, does not exist."""


class VideoDataModule(AQADataModule):
    """Shared datamodule of the benchmarks read from videos (see the module docstring).

    Args:
        sampler: temporal sampling of the T clips of L frames.
        train_transform: spatial transform of training videos.
        test_transform: spatial transform of evaluated videos and of exemplars.
        root: the benchmark's folder (``None`` for videos made in memory).
        features_root: a feature cache of this benchmark written by ``tpt_aqa.extract_features``
            (``{id}.npy`` + ``manifest.json``); when set, samples are its ``(T,C)`` features (use
            ``model/encoder=precomputed``) and the manifest must match this datamodule's clip
            sampling and transforms and the test view.
        features_expect: further manifest entries the cache must have, e.g.
            ``{"encoder.normalization": "imagenet"}``.
        **kwargs: ``AQADataModule`` arguments.
    """

    title: ClassVar[str] = "video"  # the benchmark, in messages: "MTL-AQA dive 01_02: …"
    config_name: ClassVar[str] = ""  # dataset=<config_name>, in the verify command
    noun: ClassVar[str] = "video"  # what one sample is: "dive", "trial"
    # whether the sources must exist with a feature cache too (e.g. to label the sampled frames)
    sources_with_features: ClassVar[bool] = False

    def __init__(
        self,
        sampler: ClipSampler,
        train_transform: VideoTransform,
        test_transform: VideoTransform,
        root: str | None = None,
        features_root: str | None = None,
        features_expect: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sampler = sampler
        # exemplars are seen as evaluated videos are
        self.transforms = {"train": train_transform, "test": test_transform}
        self.transforms["exemplar"] = test_transform
        self.root = None if root is None else Path(root)
        self.features_root = Path(features_root) if features_root else None
        if isinstance(features_expect, DictConfig):
            features_expect = OmegaConf.to_container(features_expect, resolve=True)
        self.features_expect = dict(features_expect or {})
        self.reads_files = False  # sources are video files (True) or frame folders
        self.exact_frame_count = False  # count a video file's frames by decoding all of them
        self.prediction_start = 0  # first frame of a new video's clip window (tpt_aqa.predict)
        self._frame_counts: dict[Path, int] = {}

    # ---- what a benchmark declares -------------------------------------------------------------
    def source(self, row: int) -> Path:
        """The frame folder or video file of a table row."""
        raise NotImplementedError

    def source_keys(self) -> str:
        """The config keys that place the sources, for messages."""
        return "dataset.root"

    def sources_folder(self) -> tuple[Path, str] | None:
        """The folder holding every source and its config key, checked before the sources."""
        return None

    def reader_options(self) -> dict[str, Any]:
        """Keyword arguments of ``read_frames`` (``pattern``, ``start``, ``decoder``, ``on_missing``)."""
        return {}

    def clip_index(
        self, row: int, view: str = "test", generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Positions in its source of a row's clip frames ``(T, L)``: here the sampler spread over
        the whole source, the same in every view.

        Args:
            row: table row.
            view: ``"train"``, ``"test"`` or ``"exemplar"``.
            generator: randomness of a training draw; ``None`` uses torch's global RNG.

        Raises:
            ValueError: when the source is too short, naming it and the fix.
        """
        try:
            return self.sampler.indices(self.frame_count(row))
        except ValueError as err:
            raise ValueError(f"{self.source(row)} is too short ({err}); {self.fix()}") from None

    def frame_span(self, row: int, view: str) -> tuple[int, int]:
        """``(first, stop)``: the frames ``[first, stop)`` a view of a row may read, over every random
        draw; here those of ``clip_index``.

        Raises:
            ValueError: when the view cannot be cut from the source, naming it and the fix.
        """
        index = self.clip_index(row, view)
        return int(index.min()), int(index.max()) + 1

    def short_advice(self, row: int) -> str:
        """What to do about a source with fewer frames than a view needs."""
        return self.fix()

    def clip_settings(self) -> dict[str, Any]:
        """What else than the sampler and the test transform determines the test clips."""
        return {}

    # ---- messages ------------------------------------------------------------------------------
    def sample_name(self, row: int) -> str:
        return f"{self.noun} {self.table.ids[row]}"

    def fix(self) -> str:
        return f"(re-)extract its frames with {PREPARE_COMMAND} or fix {self.source_keys()}"

    def verify_command(self) -> str:
        return f"python -m tpt_aqa.verify dataset={self.config_name} dataset.root={self.root}"

    def _error(self, row: int, problem: str) -> VideoReadError:
        return VideoReadError(
            f"{self.title} {self.sample_name(row)}: {problem}; list every problem with "
            f"{self.verify_command()}"
        )

    # ---- clips ---------------------------------------------------------------------------------
    @property
    def num_clips(self) -> int:
        return self.sampler.num_clips

    def video_settings(self) -> dict[str, Any]:
        """What determines the test-view clips, recorded in and checked against feature caches."""
        return {
            "sampler": asdict(self.sampler),
            "test_transform": self.transforms["test"].settings(),
            **self.clip_settings(),
        }

    def prediction_input(self) -> dict[str, Any]:
        """``{"kind": "video", "sampler": …, "transform": …, "start_frame": …}``: ClipSampler fields,
        VideoTransform settings and the first frame of the clip window of a new video; the
        features' description when the model takes cached features."""
        if self.features_root is not None:
            return super().prediction_input()
        return {
            "kind": "video",
            "sampler": asdict(self.sampler),
            "transform": self.transforms["test"].settings(),
            "start_frame": self.prediction_start,
        }

    def missing(self, row: int) -> str | None:
        """Why a row's source is absent, naming it and the fix; ``None`` when it is there."""
        source = self.source(row)
        if source.is_file() if self.reads_files else source.is_dir():
            return None
        kind = "video file" if self.reads_files else "frame folder"
        return f"{kind} {source} is missing; {self.fix()}"

    def frame_count(self, row: int) -> int:
        """Frames of a row's source. A folder's listing is cached by the reader (and renewed when
        the folder changes); a video file, which must be opened to be counted, once per process."""
        source = self.source(row)
        options = self.reader_options()
        if not self.reads_files:
            return count_frames(source, options.get("pattern"), options.get("start", 0))
        if source not in self._frame_counts:
            self._frame_counts[source] = count_frames(source, exact=self.exact_frame_count)
        return self._frame_counts[source]

    def read(self, row: int, frames: np.ndarray) -> torch.Tensor:
        """Frames at positions ``frames`` ``(F,)`` of a row's source, uint8 ``(F, 3, H, W)``."""
        return read_frames(self.source(row), frames, **self.reader_options())

    def _view_span(self, row: int, view: str) -> tuple[int, int]:
        """``frame_span`` checked against the source: it exists and has the frames.

        Raises:
            VideoReadError: naming the source and the fix.
        """
        missing = self.missing(row)
        if missing:
            raise MissingSourceError(missing)
        count = self.frame_count(row)
        try:
            first, stop = self.frame_span(row, view)
        except ValueError as err:
            raise VideoReadError(str(err)) from None
        if stop > count:
            raise VideoReadError(
                f"{self.source(row)} has {count} frames but the {view} view needs {stop}; "
                f"{self.short_advice(row)}"
            )
        return first, stop

    def clip_frames(
        self, row: int, view: str, generator: torch.Generator | None = None
    ) -> tuple[Path, np.ndarray]:
        """Where a row's clips are read from and the positions of their frames in it ``(T, L)``.

        Raises:
            VideoReadError: a missing source, one with too few frames, or a window that cannot be
                cut from it; the message names the path and the fix.
        """
        return self.source(row), self._checked_index(row, view, generator)

    def _checked_index(
        self, row: int, view: str, generator: torch.Generator | None = None
    ) -> np.ndarray:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        try:
            self._view_span(row, view)
        except VideoReadError as err:
            raise self._error(row, str(err)) from None
        return self.clip_index(row, view, generator)

    def load_video(self, row: int, view: str) -> torch.Tensor:
        """The clips of a row ``(T, 3, L, H, W)`` uint8, read now (its ``(T, C)`` features with a
        feature cache)."""
        if self.features_root is not None:
            return torch.from_numpy(
                np.load(self.features_root / f"{self.table.ids[row]}.npy")
            ).float()
        index = self._checked_index(row, view)
        frames, local = unique_frames(index)  # each needed frame is read and transformed once
        try:
            video = self.read(row, frames)  # (U, 3, H, W)
        except VideoReadError as err:
            # the reader names one file; the diagnosis of the whole sample says why and what to do
            problems = self.check_sample(row)
            raise self._error(row, "; ".join(problems) if problems else str(err)) from err
        return frames_to_clips(self.transforms[view](video), local)

    # ---- checks --------------------------------------------------------------------------------
    def check_files(self) -> None:
        """At setup: the feature cache matches, and/or (without a cache, or with
        ``sources_with_features``) every sample's source exists (a quick stat each; frames are read
        later). Raises ``CacheMismatchError`` or ``MissingSourceError``."""
        if self.features_root is not None:
            self._check_feature_cache()
            if not self.sources_with_features:
                return
        folder = self.sources_folder()
        if folder is not None and not folder[0].is_dir():
            raise MissingSourceError(
                f"{self.title} {'videos' if self.reads_files else 'frames'} folder {folder[0]} "
                f"does not exist: set dataset.{folder[1]}, or {self.fix()}; then check every "
                f"{self.noun} with {self.verify_command()}"
            )
        missing = [row for row in range(len(self.table)) if self.missing(row)]
        if missing:
            examples = ", ".join(f"{self.table.ids[r]} → {self.source(r)}" for r in missing[:3])
            raise MissingSourceError(
                f"{len(missing)} of {len(self.table)} {self.title} {self.noun}s have no "
                f"{'video file' if self.reads_files else 'frame folder'} (e.g. {examples}); "
                f"{self.fix()}; list every problem with {self.verify_command()}"
            )

    def check_sample(self, row: int) -> list[str]:
        """Problems of one sample on disk, each naming the path and the fix (empty when fine).

        The source exists, has the frames every view needs, and its first and last needed frames
        decode (only those two, to stay fast).
        """
        name = self.sample_name(row)
        try:
            spans = [self._view_span(row, view) for view in VIEWS]
        except VideoReadError as err:
            return [f"{name}: {err}"]
        problems = []
        for frame in sorted({min(s[0] for s in spans), max(s[1] for s in spans) - 1}):
            try:
                self.read(row, np.array([frame]))
            except VideoReadError as err:
                problems.append(f"{name}: frame {frame} cannot be read: {err}{self.read_advice()}")
        return problems

    def read_advice(self) -> str:
        """Added to a frame that cannot be read in ``check_sample``."""
        return ""

    def _check_feature_cache(self) -> None:
        """The cache holds every video, extracted with this datamodule's settings."""
        root = self.features_root
        expected = {"video": self.video_settings(), "view": "test", **self.features_expect}
        check_manifest(root, json.loads(json.dumps(expected)))  # tuples → lists, as in the JSON
        missing = [vid for vid in self.table.ids if not (root / f"{vid}.npy").is_file()]
        if missing:
            raise CacheMismatchError(
                f"feature cache {root} lacks {len(missing)} of {len(self.table.ids)} videos "
                f"(e.g. {missing[0]}.npy); run python -m tpt_aqa.extract_features again to resume"
            )
