"""What a command sets up in its process before Hydra composes a configuration: the
``tpt_aqa.weights_setting`` resolver the I3D encoder config uses, the warning filters for
warnings with nothing to act on, and Lightning's install tips silenced.

Library modules change nothing when imported; the commands (``python -m tpt_aqa.<command>``) call
``setup`` once at their top, and so does code that composes the configs itself (the tests'
``conftest.py``, ``scripts/gpu_check.sh``). Calling it again changes nothing.
"""

from __future__ import annotations

import warnings

from omegaconf import OmegaConf

from tpt_aqa.core.pretrained import named_setting
from tpt_aqa.core.report import quiet_lightning_tips

# Warnings that say nothing a user can act on (message patterns, as warnings.filterwarnings reads them).
QUIET_WARNINGS = (
    # Lightning 2.6 on torch 2.13 warns about LeafSpec on every fit.
    (r".*LeafSpec.*", FutureWarning),
    # The I3D encoder keeps its BatchNorm layers in eval mode on purpose (frozen statistics,
    # docs/method.md §6).
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning),
    # Evaluation metrics are computed once from every rank's gathered predictions and the training
    # losses' epoch means from every rank's sums (training.lit_module), so all ranks log the same
    # value; Lightning's advice to reduce them again (sync_dist) does not apply.
    (r"It is recommended to use `self\.log\('(train|val|test|test_every_epoch)/", Warning),
)


def setup() -> None:
    """Register the config resolver, filter the warnings of ``QUIET_WARNINGS`` and silence
    Lightning's tips, for this process."""
    # conf/model/encoder/i3d.yaml: `${tpt_aqa.weights_setting:${.weights},bn_eps,1.0e-5}` is what
    # the named weights need (model.encoder.weights=kinetics400: 1e-3), else the default; a key the
    # configuration sets itself replaces the interpolation.
    OmegaConf.register_new_resolver("tpt_aqa.weights_setting", named_setting, replace=True)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    quiet_lightning_tips()
