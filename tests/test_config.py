"""Config: paper defaults, pickle/JSON round trip, restricted unpickling."""
import dataclasses
import json
import os
import pickle
import re

import numpy as np
import pytest

from keras_frcnn_cryo.config import Config, load_config, save_config
from keras_frcnn_cryo.errors import CryoError


def test_paper_defaults():
    cfg = Config()
    assert cfg.anchor_box_scales == [128.0, 256.0, 512.0]
    assert cfg.anchor_box_ratios == [[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]]
    assert cfg.num_anchors == 9
    assert (cfg.im_size, cfg.rpn_stride, cfg.pool_size) == (600, 16, 7)
    assert (cfg.rpn_nms_overlap, cfg.rpn_max_proposals) == (0.7, 300)
    assert (cfg.rpn_min_overlap, cfg.rpn_max_overlap) == (0.3, 0.7)
    assert (cfg.classifier_min_overlap, cfg.classifier_max_overlap) == (0.1, 0.5)
    assert (cfg.learning_rate, cfg.adam_beta_1, cfg.adam_beta_2) == (1e-5, 0.9, 0.999)
    assert cfg.lambda_rpn_regr == cfg.lambda_cls_regr == 1.0
    assert (cfg.bilateral_sigma_r, cfg.bilateral_sigma_d) == (1.2, 100.0)
    assert cfg.effective_sigma_d(3708) == pytest.approx(100.0)
    assert cfg.effective_sigma_d(600) == pytest.approx(100.0 * 600 / 3708)


def test_round_trip_pickle_and_json(tmp_path):
    cfg = Config(class_mapping={"mito": 0, "bg": 1}, im_size=300, seed=7)
    path = tmp_path / "run" / "config.pickle"
    save_config(cfg, str(path))
    assert (tmp_path / "run" / "config.json").is_file()
    for loaded in (load_config(str(path)), load_config(str(tmp_path / "run" / "config.json"))):
        assert loaded == cfg
        assert loaded.class_names == ["mito", "bg"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["im_size"] == 300


class _Payload:
    """Unpickling this would run os.system and create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_crafted_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "config.pickle"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    # the payload is real: a plain unpickler would create the file
    with pytest.raises(CryoError, match="refusing to load global"):
        load_config(str(evil))
    assert not marker.exists()
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_older_layout_gets_defaults(tmp_path):
    cfg = Config(class_mapping={"mito": 0, "bg": 1})
    del cfg.__dict__["rpn_min_box_size"]   # a pickle from a version without this field
    path = tmp_path / "config.pickle"
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    loaded = load_config(str(path))
    assert loaded.rpn_min_box_size == Config().rpn_min_box_size
    assert loaded.class_mapping == {"mito": 0, "bg": 1}


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\x80\x04garbage", "invalid"),
                                              (pickle.dumps([1, 2]), "not a Config")])
def test_bad_pickles(tmp_path, content, message):
    path = tmp_path / "config.pickle"
    path.write_bytes(content)
    with pytest.raises(CryoError, match=message):
        load_config(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(CryoError, match="not found"):
        load_config(str(tmp_path / "nope.pickle"))


def test_stale_temporaries_of_one_file_are_removed(tmp_path):
    from keras_frcnn_cryo.atomic import atomic_path, remove_stale_temporaries
    target = tmp_path / "model.weights.h5"
    names = []
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            names.append(os.path.basename(tmp))
            raise RuntimeError("a failure inside the writer")
    assert names[0].startswith(".tmp_model_") and names[0].endswith(".weights.h5")
    assert os.listdir(tmp_path) == []                      # a failing writer cleans up after itself
    # a killed process cannot: its temporary stays; only that one is removed later
    stale = tmp_path / names[0]
    stale.write_bytes(b"partial")
    other = tmp_path / ".tmp_other_abcd1234.weights.h5"
    other.write_bytes(b"someone else's")
    assert remove_stale_temporaries(target) == [stale.name]
    assert not stale.exists() and other.exists()


def test_configs_from_before_a_changed_default_keep_their_old_behaviour(tmp_path):
    # models trained before roi_pool_mode existed pooled whole cells: they must keep doing so
    cfg = Config(class_mapping={"mito": 0, "bg": 1})
    del cfg.__dict__["roi_pool_mode"]
    path = tmp_path / "config.pickle"
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    assert load_config(str(path)).roi_pool_mode == "cells"
    assert Config().roi_pool_mode == "bilinear"
    cfg = Config(class_mapping={"mito": 0, "bg": 1})
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    assert load_config(str(path)).roi_pool_mode == "bilinear"    # a stored value always wins


def test_configs_from_before_the_feature_grid_field_keep_keras_frcnns_grid(tmp_path):
    # models trained before feature_centre_px existed put anchors and pooling at stride / 2
    cfg = Config(class_mapping={"mito": 0, "bg": 1})
    del cfg.__dict__["feature_centre_px"]
    path = tmp_path / "config.pickle"
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    assert load_config(str(path)).feature_centre_px == 8.0
    assert Config().feature_centre_px == 0.5
    json_path = tmp_path / "config.json"
    json_path.write_text(json.dumps({k: v for k, v in Config().to_dict().items() if k != "feature_centre_px"}))
    assert load_config(str(json_path)).feature_centre_px == 8.0


def test_overrides_by_field_name():
    from keras_frcnn_cryo.config import apply_overrides
    cfg = Config()
    assert apply_overrides(cfg, ["detection_nms_overlap=0.3", "roi_pool_mode=cells", "num_rois=16",
                                 "use_horizontal_flips=true", "anchor_box_scales=[32, 64]",
                                 "norm_percentiles=[1, 99]", "learning_rate=1"]) == [
        "detection_nms_overlap", "roi_pool_mode", "num_rois", "use_horizontal_flips", "anchor_box_scales",
        "norm_percentiles", "learning_rate"]
    assert (cfg.detection_nms_overlap, cfg.roi_pool_mode, cfg.num_rois) == (0.3, "cells", 16)
    assert cfg.use_horizontal_flips is True and cfg.anchor_box_scales == [32, 64]
    assert cfg.norm_percentiles == (1, 99) and cfg.learning_rate == 1.0
    for bad in ("nms=0.3", "detection_nms_overlap", "num_rois=many", "num_rois=1.5", "preprocess=1"):
        with pytest.raises(CryoError, match="--set"):
            apply_overrides(Config(), [bad])


# ------------------------------------------------------------------------------------------
# Config.validate
# ------------------------------------------------------------------------------------------
def test_validate_accepts_the_defaults_and_the_recipes():
    from keras_frcnn_cryo import recipes
    assert Config().validate() is not None
    for name in ("paper", "scratch"):
        cfg = Config()
        for key, value in recipes.recipe_values(name).items():
            setattr(cfg, key, value)
        cfg.validate()


@pytest.mark.parametrize("field_name, value, needle", [
    ("train_mode", "both", "use one of alternating, joint"),
    ("roi_pool_mode", "avg", "use one of bilinear, cells"),
    ("im_size", 0, "whole number >= 1"),
    ("num_rois", 2.5, "whole number >= 1"),
    ("learning_rate", 0.0, "> 0"),
    ("roi_context", 0.8, "number >= 1"),
    ("roi_context", "wide", "number >= 1"),
    ("classifier_smooth_l1_beta", -0.1, "number >= 0"),
    ("rpn_smooth_l1_beta", "l1", "number >= 0"),
    ("rpn_nms_overlap", 1.5, "[0, 1]"),
    ("classifier_min_overlap", 0.6, "must not exceed classifier_max_overlap"),
    ("anchor_box_scales", [], "sizes > 0"),
    ("anchor_box_ratios", [[1.0, 0.0]], "pairs > 0"),
    ("classifier_regr_std", [8.0, 8.0, 4.0], "4 weights"),
    ("eval_iou_thresholds", [0.5, 0.0], "IoUs in (0, 1]"),
    ("class_mapping", {"bg": 0, "mito": 1}, "last index"),
])
def test_validate_names_the_bad_field(field_name, value, needle):
    cfg = Config()
    setattr(cfg, field_name, value)
    with pytest.raises(CryoError, match=re.escape(f"config field {field_name} = ")) as info:
        cfg.validate()
    assert needle in str(info.value)


def test_bad_set_value_stops_training_before_anything_is_read(tmp_path):
    from keras_frcnn_cryo import train
    args = train.build_parser().parse_args(["-p", str(tmp_path / "none.txt"), "--set", "rpn_nms_overlap=2"])
    with pytest.raises(CryoError, match="rpn_nms_overlap"):
        train.config_from_args(args)


@pytest.mark.parametrize("field, value", [("track_min_length", 0), ("track_max_gap", -1), ("track_max_gap", 1.5),
                                          ("track_min_iou", 1.5), ("track_extent_quantile", 0.5),
                                          ("track_max_centre_distance_frac", -0.1), ("track_min_length", float("nan"))])
def test_tracking_values_checked_by_validate_as_by_tracking_params(field, value):
    """One rule table (config.FIELD_RULES): a bad track_* value fails Config.validate, naming
    the field, exactly as it would fail later when detection builds its TrackingParams."""
    from keras_frcnn_cryo.tracking import TrackingParams

    with pytest.raises(CryoError, match=field):
        Config(**{field: value}).validate()
    with pytest.raises(CryoError, match=field):
        TrackingParams.from_config(Config(**{field: value}))
    assert TrackingParams.from_config(Config(track_max_gap=np.int64(3))).max_gap == 3


def test_detection_view_reads_the_config_fields_and_checks_them():
    from keras_frcnn_cryo.config import FIELD_RULES, DetectionParams
    cfg = Config(detection_threshold=0.3, rpn_max_proposals_test=50, detection_views="transpose")
    rules = cfg.detection
    assert isinstance(rules, DetectionParams)
    for name, field_name in DetectionParams.CONFIG_FIELDS.items():
        assert getattr(rules, name) == getattr(cfg, field_name), name
    assert (rules.threshold, rules.max_proposals, rules.views) == (0.3, 50, "transpose")
    cfg.detection_nms_overlap = 0.3                       # read at each use: later edits count
    assert cfg.detection.nms_overlap == 0.3
    # the view's defaults are Config's (the paper's values)
    assert DetectionParams() == Config().detection
    cfg.rpn_max_proposals_test = 0
    with pytest.raises(CryoError, match="rpn_max_proposals_test = 0: must be a whole number >= 1"):
        cfg.detection
    with pytest.raises(CryoError, match="detection_views = 'all'"):
        DetectionParams(views="all")
    # one rule table behind Config.validate and the view: every rule names a real field
    assert set(FIELD_RULES) <= {f.name for f in dataclasses.fields(Config)}
    with pytest.raises(CryoError, match="learning_rate = 'fast': must be > 0"):
        Config(learning_rate="fast").validate()


@pytest.mark.parametrize("blocks, message", [((3, 4, 6), "needs 4 whole numbers"), ((3, 4, 0, 3), "needs 4 whole"),
                                             ((1.0, 1, 1, 1), "needs 4 whole")])
def test_resnet_blocks_are_checked(blocks, message):
    assert Config().resnet_blocks == [3, 4, 6, 3]                         # ResNet-50, the paper's
    with pytest.raises(CryoError, match=f"resnet_blocks = .*: {message}"):
        Config(resnet_blocks=blocks).validate()
    with pytest.raises(CryoError, match="ImageNet weights .* need ResNet-50"):
        Config(resnet_blocks=(1, 1, 1, 1), base_net_weights="w.h5").validate()
    Config(resnet_blocks=(1, 2, 1, 1)).validate()                         # a tuple does as well


def test_fields_whose_zero_is_off_say_so():
    from keras_frcnn_cryo.config import FIELD_RULES, OFF_AT_ZERO
    assert OFF_AT_ZERO <= set(FIELD_RULES)
    with pytest.raises(CryoError, match=r"aug_noise_max = -0.5: must be a number >= 0 \(0 = off\)$"):
        Config(aug_noise_max=-0.5).validate()
    with pytest.raises(CryoError, match=r"classifier_hard_negative_fraction = 1.0: must lie in \[0, 1\) \(0 = off\)$"):
        Config(classifier_hard_negative_fraction=1.0).validate()
    with pytest.raises(CryoError, match=r"learning_rate = 0: must be > 0$"):      # no "off" where 0 is no value
        Config(learning_rate=0).validate()
