"""I3D clip encoder: Inception-v1 inflated to 3D, up to Mixed_5c (docs/method.md §9).

Implements the RGB stream of I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017,
§2.4 and Fig. 3) as the TPT reference code uses it: every clip of ``L`` frames passes the network
up to Mixed_5c and the ``C×l×h×w`` map is mean-pooled to one ``C = 1024`` vector (an 8×224×224
clip gives a 1024×1×7×7 map). Module and parameter names follow the community Kinetics-400
checkpoint ``model_rgb.pth`` so that file loads strictly; ``rgb_imagenet.pt`` loads through a key
map (``tpt_aqa.models.i3d_weights`` reads both).

How this differs from the paper and from the ports the benchmarks used:

- No classifier at run time. The 400-way logits conv ``conv3d_0c_1x1`` is kept only so the
  checkpoint loads strictly; it never runs, is frozen, and ``I3DEncoder.unused_parameters`` lists
  it.
- The paper's 2×7×7 average pool before the logits is replaced by a mean over the whole map, which
  is the same for 8×224×224 clips and still defined for any other clip size.
- TensorFlow "same" padding is computed from the input size at run time (the ports fix it from the
  kernel and stride, which agrees only when each size is divisible by the stride). Max-pools pad
  with −inf as TensorFlow does; the port pads with zeros, which is equivalent because every
  max-pool here follows a ReLU.
- BatchNorm eps defaults to 1e-5 as in the port; TensorFlow and ``rgb_imagenet.pt`` used 1e-3.
- Inputs are normalised with ImageNet mean/std by default, as the reference code did, although the
  checkpoint was trained on inputs in [−1, 1]; ``normalization="minus_one_one"`` gives the latter.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _triple
from torch.utils.checkpoint import checkpoint

from tpt_aqa.models.i3d_weights import load_i3d_weights
from tpt_aqa.models.speed import fold_batch_norm

KINETICS_CLASSES = 400

# Mixed blocks in network order: in_channels and the six widths (branch_0, branch_1 reduce,
# branch_1, branch_2 reduce, branch_2, branch_3) of Inception-v1 as I3D inflated it (Fig. 3).
MIXED: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

# ImageNet statistics of the reference preprocessing, per RGB channel of inputs in [0, 1].
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# (x − 0.5) / 0.5 maps [0, 1] to [−1, 1], the range the Kinetics checkpoint was trained on.
_NORMALIZATIONS = {
    "imagenet": (_IMAGENET_MEAN, _IMAGENET_STD),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def same_padding(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
) -> list[tuple[int, int]]:
    """TensorFlow "same" padding: the output has ``ceil(size / stride)`` elements per dimension.

    Args:
        size: input sizes, one per padded dimension (e.g. ``(L, H, W)``).
        kernel: kernel sizes, same length.
        stride: strides, same length.

    Returns:
        ``(before, after)`` per dimension; an odd total puts the extra element after, as TF does.
    """
    pads = []
    for n, k, s in zip(size, kernel, stride, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _flat_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """Turn per-dimension ``(before, after)`` pairs into ``F.pad`` order (last dimension first)."""
    return tuple(p for pair in reversed(pads) for p in pair)


def _cpu_weight_grad_bug(
    x: torch.Tensor, kernel: tuple[int, int, int], weight: torch.Tensor
) -> bool:
    """Whether this convolution would hit the CPU bf16 weight-gradient fault (docs/method.md §12).

    On the CPU (oneDNN, torch 2.13), a bf16 or fp16 ``conv3d`` whose input is shallower than the
    kernel in time and that pads implicitly computes a wrong weight gradient: relative errors
    of about 1 and, depending on what the memory held, NaN or ±inf (``tests/test_speed.py``
    compares such a unit's gradients with fp32). In I3D these are the 3×3×3 units of
    Mixed_4b–4f, which see 2 frames per clip at ``L = 8``; a non-finite gradient there turned
    every weight NaN after one Adam step, and every later prediction with it. The input gradient and the forward pass are right, and the same
    convolution on an explicitly padded input is right, in every case measured.
    """
    return (
        x.device.type == "cpu"
        and x.shape[-3] < kernel[0]
        and torch.is_grad_enabled()
        and weight.requires_grad
        and (
            x.dtype in (torch.bfloat16, torch.float16)
            or (
                torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
            )
        )
    )


class Unit3D(nn.Module):
    """Conv3d without bias → BatchNorm3d → ReLU, with TF "same" padding.

    Parameter names (``conv3d``, ``batch3d``) are those of ``model_rgb.pth``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel, an int or ``(l, h, w)``.
        stride: stride, an int or ``(l, h, w)``.
        eps: BatchNorm eps.
        fold_bn: in eval mode (the unit's and its BatchNorm's), run the BatchNorm folded into the
            convolution's weight and bias: one pass over the output fewer, same function.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 1,
        stride: int | tuple[int, int, int] = 1,
        eps: float = 1e-5,
        fold_bn: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.fold_bn = fold_bn
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel_size, stride=self.stride, bias=False
        )
        self.batch3d = nn.BatchNorm3d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit.

        Args:
            x: ``(N,C_in,L,H,W)``.

        Returns:
            ``(N,C_out,ceil(L/s_l),ceil(H/s_h),ceil(W/s_w))``.
        """
        pads = same_padding(tuple(x.shape[-3:]), self.kernel_size, self.stride)
        if all(before == after for before, after in pads) and not _cpu_weight_grad_bug(
            x, self.kernel_size, self.conv3d.weight
        ):
            # Symmetric padding goes into the convolution itself, sparing a padded copy.
            padding = tuple(before for before, _ in pads)
        else:
            x = F.pad(x, _flat_pad(pads))
            padding = (0, 0, 0)
        if self.fold_bn and not self.training and not self.batch3d.training:
            # Folded afresh from the current parameters on every call (a few weight-sized
            # operations), so nothing goes stale when evaluation alternates with training.
            weight, bias = fold_batch_norm(self.conv3d.weight, self.batch3d)
            x = F.conv3d(x, weight, bias, self.stride, padding)
            return F.relu(x, inplace=not torch.is_grad_enabled())
        x = F.conv3d(x, self.conv3d.weight, None, self.stride, padding)
        return F.relu(self.batch3d(x))


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "same" padding; the padding is −inf, so it never wins the max.

    Args:
        kernel_size: kernel, an int or ``(l, h, w)``.
        stride: stride, an int or ``(l, h, w)``.
    """

    def __init__(
        self, kernel_size: int | tuple[int, int, int], stride: int | tuple[int, int, int]
    ) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool.

        Args:
            x: ``(N,C,L,H,W)``.

        Returns:
            ``(N,C,ceil(L/s_l),ceil(H/s_h),ceil(W/s_w))``.
        """
        pads = same_padding(tuple(x.shape[-3:]), self.kernel_size, self.stride)
        if all(before == after for before, after in pads):
            # max_pool3d's own padding is implicit −inf, identical to the explicit pad below.
            return F.max_pool3d(x, self.kernel_size, self.stride, padding=tuple(b for b, _ in pads))
        x = F.pad(x, _flat_pad(pads), value=float("-inf"))
        return F.max_pool3d(x, self.kernel_size, self.stride)


class MixedBlock(nn.Module):
    """Inception block: four parallel branches concatenated along channels.

    Args:
        in_channels: input channels.
        widths: ``(b0, b1_reduce, b1, b2_reduce, b2, b3)`` output channels of the six units.
        eps: BatchNorm eps.
    """

    def __init__(
        self, in_channels: int, widths: tuple[int, int, int, int, int, int], eps: float = 1e-5
    ) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branch_0 = Unit3D(in_channels, b0, eps=eps)
        self.branch_1 = nn.Sequential(
            Unit3D(in_channels, b1a, eps=eps), Unit3D(b1a, b1b, kernel_size=3, eps=eps)
        )
        self.branch_2 = nn.Sequential(
            Unit3D(in_channels, b2a, eps=eps), Unit3D(b2a, b2b, kernel_size=3, eps=eps)
        )
        self.branch_3 = nn.Sequential(MaxPool3dSame(3, 1), Unit3D(in_channels, b3, eps=eps))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches.

        Args:
            x: ``(N,C_in,L,H,W)``.

        Returns:
            ``(N,C_out,L,H,W)``.
        """
        branches = (self.branch_0, self.branch_1, self.branch_2, self.branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)


class KineticsLogits(nn.Module):
    """The checkpoint's 400-way Kinetics classifier (1×1×1 conv with bias, no BN).

    Kept only so the checkpoint loads strictly; it has no ``forward`` because nothing runs it.

    Args:
        in_channels: channels of the Mixed_5c map.
        num_classes: Kinetics classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(in_channels, num_classes, kernel_size=1, bias=True)


@contextmanager
def _batch_norm_stats_restored(module: nn.Module) -> Iterator[None]:
    """Undo whatever the block inside does to the BatchNorm running statistics of ``module``.

    Snapshot and restore rather than switching the statistics off: switching them off changes what
    autograd saves, which non-reentrant checkpointing rejects.
    """
    saved = [
        (buf, buf.clone())
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training
        for buf in m.buffers()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _recompute_contexts(
    module: nn.Module,
) -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
    """Checkpoint contexts: the recomputation must not count a batch into BN statistics twice."""
    return nullcontext(), _batch_norm_stats_restored(module)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D up to Mixed_5c, with the unused Kinetics logits layer.

    ``state_dict()`` has exactly the keys and shapes of ``model_rgb.pth`` (plus BatchNorm's
    ``num_batches_tracked``, which ``load_state_dict`` fills in when a file lacks it).

    Args:
        bn_eps: BatchNorm eps (1e-5 in the ``model_rgb.pth`` port, 1e-3 in TensorFlow).
        checkpointing: recompute each mixed block in the backward pass instead of storing its
            activations; only in training mode with gradients enabled.
        fold_bn: every unit runs its BatchNorm folded into its convolution in eval mode
            (``Unit3D``); training is unchanged.
    """

    def __init__(
        self, bn_eps: float = 1e-5, checkpointing: bool = False, fold_bn: bool = False
    ) -> None:
        super().__init__()
        self.bn_eps = bn_eps
        self.checkpointing = checkpointing
        self.conv3d_1a_7x7 = Unit3D(3, 64, kernel_size=7, stride=2, eps=bn_eps)
        self.maxpool_2a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64, eps=bn_eps)
        self.conv3d_2c_3x3 = Unit3D(64, 192, kernel_size=3, eps=bn_eps)
        self.maxpool_3a = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, (in_channels, widths) in MIXED.items():
            if name == "mixed_4b":
                self.maxpool_4a = MaxPool3dSame(3, 2)
            elif name == "mixed_5b":
                self.maxpool_5a = MaxPool3dSame(2, 2)
            self.add_module(name, MixedBlock(in_channels, widths, eps=bn_eps))
        self.out_channels: int = self.mixed_5c.out_channels
        self.conv3d_0c_1x1 = KineticsLogits(self.out_channels, KINETICS_CLASSES)
        for unit in self.modules():
            if isinstance(unit, Unit3D):
                # PyTorch's default conv init shrinks activations about a millionfold over the
                # network at random init (tests, training from scratch); He init keeps their scale.
                nn.init.kaiming_normal_(unit.conv3d.weight, mode="fan_in", nonlinearity="relu")
        self.set_fold_bn(fold_bn)

    def set_fold_bn(self, fold_bn: bool) -> None:
        """Switch BatchNorm folding (eval mode only) on or off in every unit."""
        for unit in self.modules():
            if isinstance(unit, Unit3D):
                unit.fold_bn = fold_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the Mixed_5c feature map.

        Args:
            x: normalised clips ``(N,3,L,H,W)``.

        Returns:
            ``(N,C,ceil(L/8),ceil(H/32),ceil(W/32))``; 1024×1×7×7 for an 8×224×224 clip.
        """
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.children():
            if isinstance(layer, KineticsLogits):
                continue
            if recompute and isinstance(layer, MixedBlock):
                x = checkpoint(
                    layer,
                    x,
                    use_reentrant=False,
                    # I3D draws no random numbers, so there is no RNG state to replay.
                    preserve_rng_state=False,
                    context_fn=functools.partial(_recompute_contexts, layer),
                )
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------- encoder


class I3DEncoder(nn.Module):
    """Video encoder of docs/method.md §9: I3D per clip, Mixed_5c mean-pooled to one vector per clip.

    Args:
        weights: Kinetics-400 RGB checkpoint (``model_rgb.pth`` or ``rgb_imagenet.pt``) loaded
            here, or ``"kinetics400"`` (the file ``python -m tpt_aqa.weights kinetics400``
            writes; with ``bn_eps=1e-3`` and ``"minus_one_one"``, which the config sets for it);
            ``None`` keeps the random init (tests).
        normalization: ``"imagenet"`` (ImageNet mean/std, the reference code) or
            ``"minus_one_one"`` ([0, 1] → [−1, 1], the range the checkpoint was trained on).
        freeze_bn_stats: keep every BatchNorm in eval mode, even after ``train()``: running
            statistics stay those of the checkpoint; the affine parameters still train.
        freeze_backbone: no backbone parameter requires grad; no activations are kept for backward.
        bn_eps: BatchNorm eps (1e-5 as the ``model_rgb.pth`` port; ``rgb_imagenet.pt`` and
            ``kinetics400`` used 1e-3).
        channels_last: run the network and its input in ``torch.channels_last_3d`` memory format.
        checkpointing: recompute each mixed block in backward to save activation memory
            (training with gradients only).
        clip_chunk: run at most this many clips through I3D at once to bound memory; ``None`` runs
            all ``B·T`` clips together.
        fold_bn: in eval mode (evaluation, feature extraction) run every BatchNorm folded into
            the convolution before it; training runs them apart.

    Attributes:
        out_dim: clip feature width C (1024).
    """

    def __init__(
        self,
        weights: str | None = None,
        normalization: str = "imagenet",
        freeze_bn_stats: bool = True,
        freeze_backbone: bool = False,
        bn_eps: float = 1e-5,
        channels_last: bool = False,
        checkpointing: bool = False,
        clip_chunk: int | None = None,
        fold_bn: bool = False,
    ) -> None:
        super().__init__()
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"model.encoder.normalization must be one of {sorted(_NORMALIZATIONS)}, "
                f"got {normalization!r}"
            )
        if clip_chunk is not None and clip_chunk < 1:
            raise ValueError(f"model.encoder.clip_chunk must be >= 1 or null, got {clip_chunk}")
        self.backbone = InceptionI3d(bn_eps=bn_eps, checkpointing=checkpointing, fold_bn=fold_bn)
        if weights is not None:
            load_i3d_weights(self.backbone, weights)
        self.out_dim: int = self.backbone.out_channels
        self.normalization = normalization
        self.freeze_bn_stats = freeze_bn_stats
        self.freeze_backbone = freeze_backbone
        self.channels_last = channels_last
        self.clip_chunk = clip_chunk
        mean, std = _NORMALIZATIONS[normalization]
        # Not persistent: they follow from the config, so model checkpoints do not carry them.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)

        if freeze_backbone:
            self.backbone.requires_grad_(False)
        # DDP reduces every parameter that requires grad and stalls on one that never gets a
        # gradient; the logits never run, so leaving them out of the optimizer is not enough.
        self.backbone.conv3d_0c_1x1.requires_grad_(False)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last_3d)
        self.train()

    def train(self, mode: bool = True) -> I3DEncoder:
        """Set training mode; with ``freeze_bn_stats`` BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm):  # also SyncBatchNorm after Lightning's conversion
                    m.eval()
        return self

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters that never take part in ``forward``: the Kinetics logits layer."""
        return list(self.backbone.conv3d_0c_1x1.parameters())

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Encode every clip of every video.

        Args:
            videos: clips ``(B,T,3,L,H,W)``, uint8 in [0, 255] or float in [0, 1].

        Returns:
            Clip features ``(B,T,C)``.
        """
        if videos.dim() != 6 or videos.shape[2] != 3:
            raise ValueError(
                f"I3D encoder expects RGB clips (B, T, 3, L, H, W), got {tuple(videos.shape)}; "
                "for cached clip features use the precomputed encoder (model/encoder=precomputed)"
            )
        if videos.dtype != torch.uint8 and not videos.is_floating_point():
            raise ValueError(
                f"I3D encoder expects uint8 (0-255) or float (0-1) clips, got {videos.dtype}"
            )
        b, t = videos.shape[:2]
        clips = videos.flatten(0, 1)  # (B*T, 3, L, H, W)
        chunk = self.clip_chunk or clips.shape[0]
        features = [self._encode(part) for part in clips.split(chunk)]
        return torch.cat(features).unflatten(0, (b, t))  # (B, T, C)

    def _encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalise clips ``(N,3,L,H,W)`` and pool their Mixed_5c maps to ``(N,C)``."""
        # Converted per chunk so that a uint8 batch is never held as float all at once.
        x = clips.to(self.mean.dtype)
        if clips.dtype == torch.uint8:
            x = x / 255
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.backbone(x).mean(dim=(2, 3, 4))  # (N, C)
