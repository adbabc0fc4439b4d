"""The exemplar bank: what scoring a new video needs, carried by the checkpoint (docs/method.md §7).

TPT scores a video relative to exemplars of known score: prediction = mean over M exemplars of
(exemplar score + Δ̂), × the video's scale. To score a video without the training data, the
checkpoint that ``tpt_aqa.train`` selects gains ``checkpoint["tpt_aqa"]["bank"]`` at the end of
training, holding:

* ``parts``: the decoder parts ``(N,K,D)`` of every training video, in float16 by default (what
  the pair stage consumes, so a prediction needs one encoder pass: the new video's);
* ``target``, ``scale``, ``group``, ``ids`` of those videos;
* ``exemplars``: a fixed, seeded list of M bank rows per exemplar group ``(G,M)``, ``-1`` padded;
* how a user names a group (``group_option``: ``difficulty``, ``class``, ``group`` or none, and
  one value per group), class names, the raw score ranges of benchmarks trained on a 0–100 scale;
* ``input``: how a new video is read (clip sampler, test transform, first frame of the window) or
  that the model takes cached features.

Size: 2·K·D bytes per training video in float16 (MTL-AQA: 1,059 × 5 × 512 × 2 B = 5.4 MB).
Everything is stored as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads
it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.core.atomic import atomic_torch_save
from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.samplers import DIFFICULTY_DECIMALS
from tpt_aqa.scoring.stage import encode_rows, group_exemplars, relative_scores, row_loader, vote


class BankError(ConfigError):
    """A checkpoint without a usable exemplar bank, or a group that is not in it."""


@dataclass
class ExemplarBank:
    """Training exemplars and the metadata to score new videos against them.

    Attributes:
        parts: parts of every training video ``(N,K,D)``.
        target: scores on the training scale ``(N,)``.
        scale: multipliers to the reported scale ``(N,)``.
        group: exemplar group ids ``(N,)``.
        exemplars: fixed exemplar rows (into this bank) per group ``(G,M)``, ``-1`` padded.
        ids: sample ids of the rows.
        group_names: name of each group id.
        group_option: what a user gives to name a group (``"difficulty"``, ``"class"``,
            ``"group"``), ``None`` when there is one group.
        group_values: one value per group id for ``group_option`` (difficulties, class names…).
        class_names: class names of the benchmark.
        score_ranges: raw ``[lo, hi]`` per group name when scores were normalised to 0–100.
        input: how a new video is read (``AQADataModule.prediction_input``).
        dataset: the datamodule class the bank was built from.
    """

    parts: torch.Tensor
    target: torch.Tensor
    scale: torch.Tensor
    group: torch.Tensor
    exemplars: torch.Tensor
    ids: list[str]
    group_names: list[str]
    group_option: str | None
    group_values: list[Any]
    class_names: list[str]
    score_ranges: dict[str, list[float]] | None
    input: dict[str, Any]
    dataset: str

    def __len__(self) -> int:
        return self.parts.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors."""
        tensors = (self.parts, self.target, self.scale, self.group, self.exemplars)
        return sum(t.numel() * t.element_size() for t in tensors)

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain values only, for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str = "the checkpoint") -> ExemplarBank:
        """Rebuild from ``to_state``; a missing key is a ``BankError`` naming it."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state]
        if missing:
            raise BankError(
                f"the exemplar bank in {source} lacks {missing}: it was written by another version "
                "of tpt_aqa; rebuild it with python -m tpt_aqa.eval ckpt_path=... write_bank=true"
            )
        return cls(**{n: state[n] for n in names})

    # ---- choosing the exemplars of a new video ---------------------------------------------------
    def resolve_group(
        self,
        difficulty: float | None = None,
        class_name: str | None = None,
        group: str | None = None,
        scale: float | None = None,
    ) -> tuple[int, float]:
        """The exemplar group and the scale of a new video from what the user gave.

        Args:
            difficulty: the dive's degree of difficulty (banks whose ``group_option`` is
                ``difficulty``); it is also the video's scale.
            class_name: the action class (``class``).
            group: a group name (``group``).
            scale: the multiplier to the reported score, when the group does not fix it.

        Returns:
            ``(group id, scale)``.

        Raises:
            BankError: when the needed option is missing, unknown, or not this bank's; the
                message lists the valid values.
        """
        given = {
            k: v
            for k, v in (("difficulty", difficulty), ("class", class_name), ("group", group))
            if v is not None
        }
        option = self.group_option
        extra = sorted(set(given) - {option})
        if extra:
            raise BankError(
                f"{'/'.join(extra)}= does not apply to this checkpoint ({self._option_text()})"
            )
        if option is None:
            gid = 0
        elif option not in given:
            raise BankError(f"pass {option}=<value>: {self._option_text()}")
        elif option == "difficulty":
            d = float(given["difficulty"])
            matches = [
                i
                for i, v in enumerate(self.group_values)
                if math.isclose(round(d, DIFFICULTY_DECIMALS), float(v), abs_tol=1e-9)
            ]
            if not matches:
                raise BankError(
                    f"difficulty={d:g} is not in the training data: {self._option_text()}"
                )
            gid = matches[0]
            if scale is None:
                scale = d
        else:
            value = str(given[option])
            if value not in [str(v) for v in self.group_values]:
                raise BankError(f"{option}={value} is unknown: {self._option_text()}")
            gid = [str(v) for v in self.group_values].index(value)
        if scale is None:
            scale = self._group_scale(gid)
        return gid, float(scale)

    def _option_text(self) -> str:
        if self.group_option is None:
            return "it has one exemplar group and needs no group option"
        values = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.group_values)
        return f"its valid {self.group_option} values are {values}"

    def _group_scale(self, gid: int) -> float:
        scales = self.scale[self.group == gid].double()
        if len(scales) and torch.allclose(scales, scales[0].expand_as(scales)):
            return float(scales[0])
        raise BankError(
            f"the videos of group {self.group_names[gid]!r} have different scales: pass scale=<value>"
        )

    def exemplar_rows(self, gid: int, which: str = "fixed") -> torch.Tensor:
        """Bank rows a video of group ``gid`` is compared with: the fixed M (``"fixed"``, as in
        evaluation) or every training video of the group (``"all"``)."""
        if which == "fixed":
            rows = self.exemplars[gid]
            rows = rows[rows >= 0]
        elif which == "all":
            rows = torch.nonzero(self.group == gid).flatten()
        else:
            raise BankError(f"exemplars={which} is unknown: use exemplars=fixed or exemplars=all")
        if len(rows) == 0:
            raise BankError(f"exemplar group {self.group_names[gid]!r} has no training video")
        return rows

    def raw_score(self, gid: int, score: float) -> float | None:
        """The score on the benchmark's raw scale, for banks trained on a 0–100 scale."""
        if not self.score_ranges:
            return None
        lo, hi = self.score_ranges[self.group_names[gid]]
        return lo + score / 100.0 * (hi - lo)


@torch.no_grad()
def score_parts(
    module, bank: ExemplarBank, parts: torch.Tensor, rows: torch.Tensor, scale: float
) -> dict[str, torch.Tensor]:
    """Compare one video's parts with bank rows: the relative scores and the vote.

    Args:
        module: an ``AQAModule`` (its ``model`` and fitted ``score_groups``).
        bank: the exemplar bank.
        parts: the video's parts ``(K,D)``.
        rows: bank rows of its exemplars ``(M,)``.
        scale: the video's multiplier to the reported scale.

    Returns:
        ``delta`` ``(M,)`` and ``per_exemplar`` ``(M,)`` = exemplar score + Δ̂ (training scale), and
        ``score``, the vote (reported scale), as float64 on the CPU.
    """
    ex = bank.parts[rows].to(parts.device, parts.dtype)[None]  # (1, M, K, D)
    delta = relative_scores(module.model, module.score_groups, parts[None], ex)[0].cpu().double()
    target = bank.target[rows].double()
    score = vote(target[None], delta[None], scale)[0]
    return {"delta": delta, "per_exemplar": target + delta, "score": score}


@torch.no_grad()
def build_bank(
    module,
    dm,
    dtype: torch.dtype = torch.float16,
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> ExemplarBank:
    """Encode every training video once and collect what prediction needs.

    Args:
        module: an ``AQAModule`` with the weights the bank is for (the selected checkpoint's).
        dm: its set-up datamodule.
        dtype: storage type of the parts (float16 halves the size; float32 reproduces evaluation
            bit for bit).
        forward_context: the autocast context evaluation ran under (Lightning's
            ``trainer.precision_plugin.forward_context``), so parts match evaluation.

    Returns:
        The bank, on the CPU.
    """
    table = dm.table
    rows = table.rows("train")  # sorted
    was_training = module.training
    module.eval()
    with forward_context() if forward_context else nullcontext():
        parts = encode_rows(
            module.model,
            row_loader(dm, rows),
            len(table),
            lambda videos: module.transfer_batch_to_device(videos, module.device, 0),
        )
    module.train(was_training)
    fixed = group_exemplars(table, dm.num_exemplars, dm.seed)  # table rows (G, M)
    exemplars = np.where(fixed >= 0, np.searchsorted(rows, fixed), -1)  # bank rows
    option = dm.group_option()
    return ExemplarBank(
        parts=parts[torch.as_tensor(rows)].float().cpu().to(dtype),  # (N, K, D)
        target=torch.as_tensor(table.target[rows], dtype=torch.float32),
        scale=torch.as_tensor(table.scale[rows], dtype=torch.float32),
        group=torch.as_tensor(table.group[rows], dtype=torch.long),
        exemplars=torch.from_numpy(exemplars),
        ids=[table.ids[int(r)] for r in rows],
        group_names=list(table.group_names),
        group_option=option["option"],
        group_values=list(option["values"]),
        class_names=list(table.class_names),
        score_ranges=dm.raw_score_ranges(),
        input=dm.prediction_input(),
        dataset=f"{type(dm).__module__}.{type(dm).__qualname__}",
    )


def attach_bank(ckpt_path: str | Path, bank: ExemplarBank, module=None) -> None:
    """Add the bank to a checkpoint file, atomically (temp file in its folder, then rename).

    Args:
        ckpt_path: the checkpoint to update.
        bank: the exemplar bank built from its weights.
        module: the ``AQAModule`` the bank was built with: its score groups (fitted in ``setup``
            when the checkpoint had none, e.g. a converted one) are written along, so the bank's
            relative scores decode as they were computed.
    """
    path = Path(ckpt_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.setdefault("tpt_aqa", {})["bank"] = bank.to_state()
    if module is not None:
        for key, value in module.score_groups.state_dict().items():
            ckpt["state_dict"][f"score_groups.{key}"] = value.cpu()
    atomic_torch_save(ckpt, path, mode=path.stat().st_mode & 0o777)  # keep its permissions


def bank_from_checkpoint(ckpt: dict[str, Any], source: str) -> ExemplarBank:
    """The bank stored in a loaded checkpoint; a clear ``BankError`` when it has none."""
    state = ckpt.get("tpt_aqa", {}).get("bank")
    if state is None:
        raise BankError(
            f"{source} has no exemplar bank (only the checkpoint tpt_aqa.train selects gets one, "
            "see results.json 'checkpoint'); add one with python -m tpt_aqa.eval "
            f"ckpt_path={source} write_bank=true"
        )
    return ExemplarBank.from_state(state, source)
