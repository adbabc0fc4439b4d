"""The datamodule of benchmarks whose samples are frame folders or video files (docs/method.md §8–9):
a benchmark gives its table (``build_table``), each sample's ``source`` and, unless the sampler
spans the whole source, its frames (``clip_index``, ``frame_span``); the rest is shared here."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tpt_aqa.core.cache import CacheMismatchError, check_manifest
from tpt_aqa.data.base import VIEWS, AQADataModule, plain
from tpt_aqa.data.clips import ClipSampler, unique_frames
from tpt_aqa.data.transforms import VideoTransform, frames_to_clips
from tpt_aqa.data.video import PREPARE_COMMAND, VideoReadError, count_frames, read_frames


class MissingSourceError(VideoReadError, FileNotFoundError):
    """A sample's frame folder or video file, or the folder holding them all, does not exist."""


class VideoDataModule(AQADataModule):
    """Shared datamodule of the benchmarks read from videos. ``root``: ``None`` for videos made in
    memory; ``features_root``: a ``tpt_aqa.extract_features`` cache whose manifest must match the
    test clips (and ``features_expect``), read instead of the videos."""

    title: ClassVar[str] = "video"  # the benchmark, in messages: "MTL-AQA dive 01_02: …"
    holds: ClassVar[str] = ""  # what dataset.root holds, in messages
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
        self.features_expect = dict(plain(features_expect) or {})
        self.reads_files = False  # sources are video files (True) or frame folders
        self.exact_frame_count = False  # count a video file's frames by decoding all of them
        self.prediction_start = 0  # first frame of a new video's clip window (tpt_aqa.predict)
        self._frame_counts: dict[Path, int] = {}

    # ---- what a benchmark declares -------------------------------------------------------------
    def source(self, row: int) -> Path:  # the frame folder or video file of a table row
        raise NotImplementedError

    def source_keys(self) -> str:  # the config keys that place the sources, for messages
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
        """Positions in its source of a row's clip frames ``(T, L)`` in a view, a training draw
        from ``generator`` (torch's global RNG for ``None``): here the sampler over the whole
        source. Raises ``ValueError`` for a source too short, naming it and the fix."""
        try:
            return self.sampler.indices(self.frame_count(row))
        except ValueError as err:
            raise ValueError(f"{self.source(row)} is too short ({err}); {self.fix()}") from None

    def frame_span(self, row: int, view: str) -> tuple[int, int]:
        """The frames ``[first, stop)`` a view of a row may read over every random draw; here those
        of ``clip_index``. Raises ``ValueError`` naming the source and the fix."""
        index = self.clip_index(row, view)
        return int(index.min()), int(index.max()) + 1

    def short_advice(self, row: int) -> str:  # for a source with fewer frames than a view needs
        return self.fix()

    def clip_settings(self) -> dict[str, Any]:  # what else determines the test clips
        return {}

    # ---- messages ------------------------------------------------------------------------------
    def sample_name(self, row: int) -> str:
        return f"{self.noun} {self.table.ids[row]}"

    def check_root(self) -> None:
        """``dataset.root`` is a folder, or a ``FileNotFoundError`` says what it should hold."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.title} dataset.root={self.root} does not exist: pass dataset.root=/path/"
                f"to/{self.title} (the folder holding {self.holds}), then check it with "
                f"{self.verify_command()}"
            )

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
        """``{"kind": "video", "sampler": …, "transform": …, "start_frame": …}`` (the first frame of
        a new video's clip window), or the features' description with a feature cache."""
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
        """Frames of a row's source; a video file, which must be opened to be counted, is counted
        once per process (the reader caches folder listings)."""
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
        """``frame_span`` checked against the source: it exists and has the frames."""
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

    def load_video(self, row: int, view: str) -> torch.Tensor:
        """The clips of a row ``(T, 3, L, H, W)`` uint8, read now (its ``(T, C)`` features with a
        feature cache)."""
        if self.features_root is not None:
            return torch.from_numpy(
                np.load(self.features_root / f"{self.table.ids[row]}.npy")
            ).float()
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        try:
            self._view_span(row, view)
        except VideoReadError as err:
            raise self._error(row, str(err)) from None
        index = self.clip_index(row, view)
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
        """At setup: the feature cache matches, and (without one, or ``sources_with_features``)
        every sample's source exists. Raises ``CacheMismatchError`` or ``MissingSourceError``."""
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
        """Problems of one sample on disk, each naming the path and the fix: the source exists, has
        the frames every view needs, and its first and last needed frames decode (only those two,
        to stay fast)."""
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

    def read_advice(self) -> str:  # added to a frame that cannot be read in ``check_sample``
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
