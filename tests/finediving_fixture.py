"""A tiny FineDiving tree in the release's exact format, with its real-data edge cases on purpose.

``write_finediving(root)`` writes ``Annotations/*.pkl`` (numpy arrays pickled with the legacy
``numpy.core.multiarray`` reference, as the release's files are) and one folder of JPEG frames per
dive, numbered by absolute frame (one dive crosses 999 → 1000). ``CASES`` names the dives that
carry each edge case, so tests can ask for them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SUB_ACTIONS = {
    1: "Forward",
    2: "Back",
    3: "Inward",
    11: "1 Som.Pike",
    12: "2 Som.Pike",
    20: "Entry",
}
VIDEO = "FINADivingWorldCup2021_Men3m_final_r1"

# key → (dive number, final score, difficulty, steps_transit_frames, (label, run length)…, first frame,
# split). Runs of 5–8 frames keep the JPEG folders small.
DIVES: dict[tuple[str, int], tuple[Any, ...]] = {
    (VIDEO, 0): ("407c", 70.5, 3.2, [5, 11], [(3, 6), (11, 6), (20, 8)], 995, "train"),  # 995→1014
    (VIDEO, 1): ("407c", 66.0, 3.2, [-1, 12], [(3, 6), (11, 7), (20, 7)], 2040, "train"),
    (VIDEO, 2): ("407c", 0.0, 3.2, [5, 11], [(3, 6), (11, 6), (20, 8)], 3100, "train"),  # failed
    (VIDEO, 3): ("407c", 61.05, 3.2, [11, 5], [(3, 6), (11, 6), (20, 8)], 4000, "test"),
    (VIDEO, 4): (
        "5253b",
        81.6,
        3.4,
        [4, 9, 13, 17],
        [(1, 5), (11, 5), (12, 4), (11, 4), (20, 6)],
        500,
        "train",
    ),  # A B C B D
    (VIDEO, 5): (
        "5253b",
        74.8,
        3.4,
        [4, 10, 13, 16],
        [(1, 5), (11, 5), (12, 4), (11, 4), (20, 6)],
        620,
        "test",
    ),  # disagrees
    (VIDEO, 6): (
        "6243d",
        77.0,
        3.5,
        [6, 40],
        [(2, 7), (12, 6), (20, 7)],
        7000,
        "train",
    ),  # single; out of range
    (VIDEO, 7): (
        "107b",
        55.0,
        3.0,
        [5, 12],
        [(3, 6), (11, 7), (20, 6)],
        8000,
        "test",
    ),  # no train dive
}
CASES = {
    "crossing_1000": (VIDEO, 0),
    "minus_one": (VIDEO, 1),
    "failed_zero": (VIDEO, 2),
    "out_of_order": (VIDEO, 3),
    "recurring": (VIDEO, 4),
    "disagreeing": (VIDEO, 5),
    "single_training_dive": (VIDEO, 6),
    "out_of_range": (VIDEO, 6),
    "test_without_training_number": (VIDEO, 7),
}
INCONSISTENT = {CASES[c] for c in ("minus_one", "out_of_order", "disagreeing", "out_of_range")}


def labels_of(key: tuple[str, int]) -> np.ndarray:
    """The fixture's ``frames_labels`` of a dive."""
    runs = DIVES[key][4]
    return np.concatenate([np.full(n, label, dtype=np.int64) for label, n in runs])


def legacy_pickle(obj: Any, path: Path) -> None:
    """Pickle ``obj`` (protocol 2) naming numpy's array reconstructor ``numpy.core.multiarray``,
    as pickles written by numpy 1.x (the release's) do."""
    data = pickle.dumps(obj, protocol=2)
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy._core" not in data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_finediving(root: Path, *, frames: bool = True) -> Path:
    """Write the fixture tree under ``root`` and return ``root``."""
    annotations, coarse, split = {}, {}, {"train": [], "test": []}
    for key, (number, score, difficulty, transit, _runs, first, which) in DIVES.items():
        labels = labels_of(key)
        annotations[key] = [
            number,
            np.float64(score),
            np.float64(difficulty),
            np.array(transit, dtype=np.int64),
            labels,
        ]
        coarse[key] = {
            "action_type": number,
            "start_frame": first,
            "end_frame": first + len(labels) - 1,
            "dive_score": score,
            "difficulty": difficulty,
            "judge_scores": [score / difficulty / 3] * 7,
        }
        split[which].append(key)
        if frames:
            folder = root / "FINADiving_MTL_256s" / key[0] / str(key[1])
            folder.mkdir(parents=True, exist_ok=True)
            for i, label in enumerate(labels):
                image = np.full((8, 8, 3), (int(label) * 12) % 256, dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{first + i:05d}.jpg", quality=90)
    legacy_pickle(annotations, root / "Annotations" / "fine-grained_annotation_aqa.pkl")
    legacy_pickle(split["train"], root / "Annotations" / "train_split.pkl")
    legacy_pickle(split["test"], root / "Annotations" / "test_split.pkl")
    legacy_pickle(coarse, root / "Annotations" / "FineDiving_coarse_annotation.pkl")
    legacy_pickle(SUB_ACTIONS, root / "Annotations" / "Sub_action_Types_Table.pkl")
    return root
