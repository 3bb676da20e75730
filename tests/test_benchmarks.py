"""The accuracy benchmarks' variants (benchmarks/accuracy_common.py, accuracy_synthetic.py): each is
train_frcnn.py's command plus flags, so each must be flags train_frcnn.py accepts, giving a valid
Config, and options that differ from README's default command (a typo would train the default under another
name). Options such as -n or --anchor-scales change the Config only once train.prepare fits the recipe to
the boxes (an option given wins over the fit), so the parsed options are compared, then the Config."""
import dataclasses
import os
import sys

import pytest

from keras_frcnn_cryo import train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import accuracy_synthetic  # noqa: E402


def _args(flags: list[str]):
    return train.build_parser().parse_args(["-p", "annotations.txt", *flags])


def _config(flags: list[str]):
    return train.config_from_args(_args(flags))


@pytest.mark.parametrize("name", sorted(accuracy_synthetic.VARIANTS))
def test_variant_is_a_valid_command_that_changes_the_config(name: str) -> None:
    flags = accuracy_synthetic.VARIANTS[name]
    cfg = _config(flags)
    if name == "default":
        assert flags == []
        return
    default_args = vars(_args([]))
    given = {k for k, v in vars(_args(flags)).items() if default_args[k] != v}
    assert given, f"variant {name} ({' '.join(flags)}) gives no option"
    if given <= {"num_rois", "anchor_scales"}:       # set by the fit to the boxes when not given
        return
    default = dataclasses.asdict(_config([]))
    changed = {k for k, v in dataclasses.asdict(cfg).items() if default[k] != v}
    assert changed, f"variant {name} ({' '.join(flags)}) trains README's default"


def test_smooth_l1_variants_set_the_betas() -> None:
    head = _config(accuracy_synthetic.VARIANTS["l1-head"])
    assert head.classifier_smooth_l1_beta == pytest.approx(0.111) and head.rpn_smooth_l1_beta == 1.0
    both = _config(accuracy_synthetic.VARIANTS["l1"])
    assert both.classifier_smooth_l1_beta == both.rpn_smooth_l1_beta == pytest.approx(0.111)
