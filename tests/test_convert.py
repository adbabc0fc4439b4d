"""``tpt_aqa.convert``: release checkpoints (github.com/baiyang4/aqa_tpt) → tpt_aqa checkpoints.

The release's modules are re-created here only as far as the checks need: attribute names as the
release's ``layer.py``/``model.py`` spell them (so ``state_dict()`` has the release's key layout),
forward passes written from docs/method.md §3 the straightforward way (every clip projected to keys and
values), which our decoder computes differently. Converted outputs must equal them.
"""

from __future__ import annotations

import argparse

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from tpt_aqa import convert
from tpt_aqa import eval as eval_entry
from tpt_aqa.config import ConfigError, build_datamodule, build_module
from tpt_aqa.convert import check_release_settings
from tpt_aqa.models import release_weights
from tpt_aqa.models.release_weights import (
    ReleaseCheckpoint,
    ReleaseCheckpointError,
    load_release,
    map_release_state,
)
from tpt_aqa.predictor import Predictor
from tpt_aqa.scoring.bank import BankError, ExemplarBank
from tpt_aqa.training.runtime import load_checkpoint

from .conftest import TINY, compose_cfg

C, D, K, H, G = 16, 32, 5, 16, 16  # the TINY config: feature_dim, d_model, K, hidden, groups


class ReleaseDecoderLayer(nn.Module):
    """Attributes of the release's ``ActionDecoderLayer``; evaluation-mode forward (no dropout)."""

    def __init__(self, c: int, d: int, ffn: int, first: bool) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.key_embed = nn.Linear(c, d)
        self.value_embed = nn.Linear(c, d)
        self.query_embed = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.first = first
        if first:
            self.self_attn = nn.MultiheadAttention(d, num_heads=8)  # sequence-first
            self.norm3 = nn.LayerNorm(d)

    def forward(self, memory, tgt, pos):
        keys, values = self.key_embed(memory), self.value_embed(memory)  # (B, T, D) each
        query = self.query_embed(tgt + pos)  # (B, K, D)
        logits = torch.einsum("btd,bkd->btk", keys, query) / keys.shape[-1] / self.temp
        attn = logits.softmax(dim=1)  # over the T clips
        tgt = self.norm1(tgt + torch.einsum("btk,btd->bkd", attn, values))
        tgt = self.norm2(tgt + self.linear2(torch.relu(self.linear1(tgt))))
        if self.first:
            qk = (tgt + pos).transpose(0, 1)  # (K, B, D)
            out = self.self_attn(qk, qk, tgt.transpose(0, 1), need_weights=False)[0]
            tgt = self.norm3(tgt + out.transpose(0, 1))
        return tgt, attn


class ReleaseDecoder(nn.Module):
    """Attributes of the release's ``ActionDecoder``: an embedding of K queries, two layers."""

    def __init__(self, c: int, d: int, k: int, ffn: int) -> None:
        super().__init__()
        self.query_embed = nn.Embedding(k, d)
        self.layers = nn.ModuleList(
            [ReleaseDecoderLayer(c, d, ffn, True), ReleaseDecoderLayer(c, d, ffn, False)]
        )

    def forward(self, memory):
        pos = self.query_embed.weight.expand(memory.shape[0], -1, -1)
        tgt, maps = torch.zeros_like(pos), []
        for layer in self.layers:
            tgt, attn = layer(memory, tgt, pos)
            maps.append(attn)
        return tgt, torch.stack(maps, dim=1)  # (B, K, D), (B, Y, T, K)


class ReleasePairModel(nn.Module):
    """Attributes of the release's ``PairModel``: ``action_decoder``, ``pair_encoder.mlp``,
    ``cls``, ``reg``."""

    def __init__(self, c=C, d=D, k=K, ffn=512, hidden=H, groups=G) -> None:
        super().__init__()
        self.action_decoder = ReleaseDecoder(c, d, k, ffn)
        self.pair_encoder = nn.Module()
        self.pair_encoder.mlp = nn.Sequential(
            nn.Linear(2 * d, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d)
        )
        self.cls = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, groups))
        self.reg = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, groups), nn.Sigmoid()
        )
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # every tensor random, so a swapped mapping cannot go unnoticed
            for name, p in self.named_parameters():
                if name.endswith(".temp"):
                    p.copy_(0.05 + 0.1 * torch.rand((), generator=gen))
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    def score(self, exemplar_parts, query_parts):
        """Evaluation: the pair (exemplar, query) → group logits and offsets."""
        rel = self.pair_encoder.mlp(torch.cat([exemplar_parts, query_parts], dim=-1)).mean(1)
        return self.cls(rel), self.reg(rel)


def _release(prefix: str = "", **sizes) -> tuple[ReleasePairModel, ReleaseCheckpoint]:
    ref = ReleasePairModel(**sizes).eval()
    state = {prefix + k: v.clone() for k, v in ref.state_dict().items()}
    return ref, ReleaseCheckpoint(
        model=release_weights.strip_ddp_prefix(state, "test"), backbone=None
    )


@pytest.fixture
def tiny(tmp_path):
    return compose_cfg(tmp_path, *TINY)


def test_key_map_covers_the_release_layout(tiny):
    """Every release key maps to a distinct key of ours, and every key of ours is set."""
    _, release = _release()
    ours = build_module(tiny).model.state_dict()
    mapped = map_release_state(release, ours)
    assert set(mapped) == set(ours)
    assert len(release.model) == len(ours)  # one to one: nothing dropped, nothing filled in
    assert torch.equal(
        mapped["parser.layers.0.self_attn.in_proj_weight"],
        release.model["action_decoder.layers.0.self_attn.in_proj_weight"],
    )
    assert torch.equal(
        mapped["parser.query_embed"], release.model["action_decoder.query_embed.weight"]
    )


@pytest.mark.parametrize("prefix", ["", "module."])
def test_converted_model_reproduces_the_release_outputs(tiny, prefix):
    ref, _ = _release()
    state = {prefix + k: v for k, v in ref.state_dict().items()}
    release = ReleaseCheckpoint(
        model=release_weights.strip_ddp_prefix(state, "test"), backbone=None
    )
    model = build_module(tiny).model
    model.load_state_dict(map_release_state(release, model.state_dict()))
    model.eval().double()
    ref.double()
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(3, 20, C, generator=gen, dtype=torch.float64)  # (B, T, C) clip features
    exemplar = torch.randn(3, 20, C, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        # the parser itself: the precomputed encoder (identity) would cast to float32
        ours_q, ours_e = model.parser(query), model.parser(exemplar)
        ref_q, ref_attn = ref.action_decoder(query)
        ref_e, _ = ref.action_decoder(exemplar)
        logits, offsets = model.compare(ours_e[0], ours_q[0])
        ref_logits, ref_offsets = ref.score(ref_e, ref_q)
    torch.testing.assert_close(ours_q[0], ref_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_q[1], ref_attn, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_e[0], ref_e, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(offsets, ref_offsets, atol=1e-6, rtol=0)
    assert ref_attn[0, 0].sum(0).allclose(torch.ones(K, dtype=torch.float64))  # a real softmax
    assert logits.std() > 0.1 and offsets.std() > 0.01  # outputs that would show a wrong map


def test_missing_key_is_named(tiny):
    _, release = _release()
    del release.model["action_decoder.layers.0.norm3.weight"]
    with pytest.raises(
        ReleaseCheckpointError,
        match=r"does not set \(1\): parser\.layers\.0\.self_norm\.weight \(32,\)",
    ):
        map_release_state(release, build_module(tiny).model.state_dict())


def test_extra_and_unknown_keys_are_named(tiny):
    _, release = _release()
    release.model["action_decoder.layers.1.norm3.weight"] = torch.ones(D)  # SA in layer 2
    release.model["weighed_norm.weight"] = torch.ones(D)  # no pattern knows it
    with pytest.raises(ReleaseCheckpointError) as err:
        map_release_state(release, build_module(tiny).model.state_dict())
    message = str(err.value)
    assert "model: weighed_norm.weight (32,)" in message
    assert (
        "model: action_decoder.layers.1.norm3.weight (32,) → parser.layers.1.self_norm.weight"
        in message
    )


def test_wrong_shape_is_named_with_the_files_sizes(tiny):
    _, release = _release(d=48)  # the file has D=48; the config D=32
    with pytest.raises(ReleaseCheckpointError) as err:
        map_release_state(release, build_module(tiny).model.state_dict())
    message = str(err.value)
    assert (
        "model: action_decoder.query_embed.weight (5, 48) → parser.query_embed (5, 32)" in message
    )
    assert "pass model.num_queries=5 model.d_model=48" in message
    assert "model.heads.hidden_dim=16 model.num_groups=16" in message


def test_release_file_with_numpy_metadata_loads_safely(tmp_path):
    ref, _ = _release()
    adam = torch.optim.Adam(ref.parameters())
    torch.save(
        {
            "model": ref.state_dict(),
            "optimizer": adam.state_dict(),
            "epoch": 249,
            "epoch_best": np.float64(231.0),  # pandas cells, as the release stores them
            "rho_best": np.float64(0.9607),
            "RL2_min": np.float64(0.2378),
        },
        tmp_path / "release.pth",
    )
    release = load_release(tmp_path / "release.pth")
    assert release.backbone is None and set(release.model) == set(ref.state_dict())
    assert release.meta == {
        "epoch": 249,
        "epoch_best": 231.0,
        "rho_best": 0.9607,
        "RL2_min": 0.2378,
    }
    assert all(type(v) in (int, float) for v in release.meta.values())


def test_release_file_with_objects_is_refused_with_instructions(tmp_path):
    torch.save({"model": {}, "args": argparse.Namespace(d_model=512)}, tmp_path / "r.pth")
    with pytest.raises(ReleaseCheckpointError, match=r"argparse\.Namespace.*weights_only=False"):
        load_release(tmp_path / "r.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ReleaseCheckpointError, match="is it a checkpoint the release"):
        load_release(tmp_path / "text.pth")
    torch.save({"weights": {}}, tmp_path / "other.pth")
    with pytest.raises(
        ReleaseCheckpointError, match=r"expected a dict with 'model'.*\['weights'\]"
    ):
        load_release(tmp_path / "other.pth")


def test_settings_keys_cannot_show_are_checked(tmp_path):
    check_release_settings(compose_cfg(tmp_path, *TINY), has_backbone=False)
    cfg = compose_cfg(tmp_path, *TINY, "model.parser.scale=sqrt_dim", "model.parser.num_heads=4")
    with pytest.raises(
        ConfigError, match=r"model\.parser\.scale=sqrt_dim.*model\.parser\.num_heads=4"
    ):
        check_release_settings(cfg, has_backbone=False)
    with pytest.raises(ConfigError, match="model/encoder=i3d"):
        check_release_settings(compose_cfg(tmp_path, *TINY), has_backbone=True)


def test_i3d_backbone_section_lands_in_the_encoder(tmp_path):
    """The release's ``backbone`` (I3D_backbone: the I3D under ``backbone.``, model_rgb.pth
    layout) fills our I3D encoder tensor for tensor; a file without BatchNorm step counters too."""
    cfg = compose_cfg(tmp_path, *TINY, "model/encoder=i3d")
    check_release_settings(cfg, has_backbone=True)
    model = build_module(cfg).model
    _, release = _release(c=1024)
    gen = torch.Generator().manual_seed(1)
    backbone = {
        f"backbone.{k}": v + torch.randn(v.shape, generator=gen).to(v.dtype)
        if v.is_floating_point()
        else v + 7
        for k, v in model.encoder.backbone.state_dict().items()
    }
    release.backbone = backbone
    mapped = map_release_state(release, model.state_dict())
    model.load_state_dict(mapped)
    for key, value in model.encoder.backbone.state_dict().items():
        assert torch.equal(value, backbone[f"backbone.{key}"]), key
    release.backbone = {k: v for k, v in backbone.items() if "num_batches_tracked" not in k}
    assert set(map_release_state(release, model.state_dict())) == set(model.state_dict())
    release.backbone = None
    with pytest.raises(ReleaseCheckpointError, match="model/encoder=precomputed"):
        map_release_state(release, model.state_dict())


def _save_release(path, ref: nn.Module) -> None:
    torch.save({"model": ref.state_dict(), "epoch": 9, "rho_best": np.float64(0.5)}, path)


def test_cli_converts_then_eval_and_predict_run(tmp_path):
    """convert → tpt_aqa.eval on the result → Predictor, with the release's weights throughout."""
    ref, _ = _release()
    _save_release(tmp_path / "release.pth", ref)
    out = tmp_path / "converted" / "tpt.ckpt"
    summary = convert.main(
        [
            "--from-release",
            str(tmp_path / "release.pth"),
            "--out",
            str(out),
            "--device",
            "cpu",
            *TINY,
        ]
    )
    assert summary["score_groups_fitted"] and summary["release"] == {"epoch": 9, "rho_best": 0.5}
    assert not list(out.parent.glob("*.tmp"))  # atomic write left nothing behind

    ckpt, cfg = load_checkpoint(out)
    assert ckpt["epoch"] == 9 and ckpt["global_step"] == 0 and "pytorch-lightning_version" in ckpt
    assert cfg.dataset.val_fraction == 0  # the release's data setting
    assert cfg.model.encoder.out_dim == C and not cfg.require_encoder_weights
    state = ckpt["state_dict"]
    assert torch.equal(
        state["model.parser.layers.1.ffn.3.weight"], ref.action_decoder.layers[1].linear2.weight
    )
    assert torch.equal(state["model.heads.reg.2.bias"], ref.reg[2].bias)
    assert bool(state["score_groups.fitted"])

    # the score groups and the bank are those of the training split of the configured data
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(state)
    module.eval()
    expected = build_module(cfg).score_groups.fit(dm.train_deltas(), dm.delta_cap)
    assert torch.equal(module.score_groups.right, expected.right)
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    rows = dm.table.rows("train")
    assert len(bank) == len(rows) == 90  # no validation carve
    with torch.no_grad():
        parts = module.model.encode(dm.sample(int(rows[0]), "exemplar")["video"][None]).parts[0]
    torch.testing.assert_close(bank.parts[0].float(), parts, atol=2e-3, rtol=2e-3)  # float16 bank

    results = eval_entry.run(compose_cfg(tmp_path, f"ckpt_path={out}", config="eval"))
    assert np.isfinite(results["test/srcc"]) and results["test/rl2"] >= 0
    # Lightning restores it too, and tests to the same numbers
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.test(build_module(cfg), datamodule=dm, ckpt_path=str(out), verbose=False)
    assert metrics["test/srcc"] == pytest.approx(results["test/srcc"], abs=1e-6)

    predictor = Predictor(out, device="cpu")
    row = int(dm.table.rows("test")[0])
    np.save(tmp_path / "video.npy", dm.sample(row, "test")["video"].numpy())
    pred = predictor.predict(tmp_path / "video.npy", difficulty=float(dm.table.scale[row]))
    assert np.isfinite(pred.score) and pred.attn.shape == (2, 20, K)


def test_cli_no_bank_and_user_errors(tmp_path, capsys):
    ref, _ = _release()
    _save_release(tmp_path / "release.pth", ref)
    out = tmp_path / "weights.ckpt"
    # data given: score groups fitted, no bank (predict refuses, naming the fix)
    convert.main(
        [
            "--from-release",
            str(tmp_path / "release.pth"),
            "--out",
            str(out),
            "--no-bank",
            *TINY,
            "dataset.val_fraction=0.2",
        ]
    )
    ckpt, cfg = load_checkpoint(out)
    assert "bank" not in ckpt["tpt_aqa"] and bool(ckpt["state_dict"]["score_groups.fitted"])
    assert cfg.dataset.val_fraction == 0.2  # an override wins over the release's data setting
    with pytest.raises(BankError, match="write_bank=true"):
        Predictor(out, device="cpu")
    # no data (MTL-AQA without dataset.root): weights only, score groups left unfitted
    mtl = ["dataset=mtl_aqa", "model.d_model=32", "model.heads.hidden_dim=16"]
    ref_mtl, _ = _release(c=1024)
    _save_release(tmp_path / "mtl.pth", ref_mtl)
    summary = convert.main(
        ["--from-release", str(tmp_path / "mtl.pth"), "--out", str(out), "--no-bank", *mtl]
    )
    assert not summary["score_groups_fitted"]
    assert "score groups not fitted" in capsys.readouterr().out
    ckpt, cfg = load_checkpoint(out)
    assert not bool(ckpt["state_dict"]["score_groups.fitted"])
    assert cfg.dataset.train_transform.reference_resize_quirk  # the release's resize ...
    assert cfg.dataset.test_transform.reference_resize_quirk  # ... where evaluation reads
    # ... and without --no-bank the missing data is a user error naming the key
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--from-release", str(tmp_path / "mtl.pth"), "--out", str(out), *mtl])
    assert exit_info.value.code == 2
    assert "dataset.root is not set" in capsys.readouterr().err
    # a size mismatch exits 2 with the file's sizes
    with pytest.raises(SystemExit):
        convert.main(
            ["--from-release", str(tmp_path / "mtl.pth"), "--out", str(out), "--no-bank", *mtl[:2]]
        )
    assert "pass model.num_queries=5 model.d_model=32" in capsys.readouterr().err


def test_help_says_what_no_bank_means(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--from-release" in text and "score groups stay unfitted" in text


@pytest.mark.slow
def test_release_with_i3d_backbone_end_to_end(tmp_path):
    """A release file with a fine-tuned I3D: convert on rendered videos, then evaluate and score a
    frame folder; the encoder carries the file's I3D tensors."""
    from tpt_aqa.data.video import write_frame_folder
    from tpt_aqa.models.i3d import InceptionI3d

    ref = ReleasePairModel(c=1024, k=3)
    torch.manual_seed(5)
    i3d = InceptionI3d()
    backbone = {f"backbone.{k}": v for k, v in i3d.state_dict().items()}
    torch.save({"model": ref.state_dict(), "backbone": backbone, "epoch": 3}, tmp_path / "r.pth")
    video = [
        "experiment=synthetic_video_tpt",
        "dataset.num_train=12",
        "dataset.num_test=4",
        "model.num_queries=3",
        "model.d_model=32",
        "model.heads.hidden_dim=16",
    ]
    out = tmp_path / "tpt.ckpt"
    convert.main(["--from-release", str(tmp_path / "r.pth"), "--out", str(out), *video])
    ckpt, cfg = load_checkpoint(out)
    assert cfg.model.encoder.weights is None
    for key, value in i3d.state_dict().items():
        assert torch.equal(ckpt["state_dict"][f"model.encoder.backbone.{key}"], value), key
    results = eval_entry.run(compose_cfg(tmp_path, f"ckpt_path={out}", config="eval"))
    assert np.isfinite(results["test/rl2"])
    dm = build_datamodule(cfg)
    row = int(dm.table.rows("test")[0])
    write_frame_folder(tmp_path / "dive", dm._frames[row], quality=95)
    pred = Predictor(out, device="cpu").predict(
        tmp_path / "dive", difficulty=float(dm.table.scale[row])
    )
    assert np.isfinite(pred.score) and pred.attn.shape == (2, 5, 3)
