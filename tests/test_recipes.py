"""Training recipes: which one a command line gets, what each sets, and the choices fitted to the boxes."""
from __future__ import annotations

import dataclasses
import os

import pytest

from keras_frcnn_cryo import recipes, train
from keras_frcnn_cryo.config import Config
from keras_frcnn_cryo.errors import CryoError

from conftest import toy_config


def record(width: int, height: int, boxes: list[tuple[float, float, float, float]]) -> dict:
    return {"filepath": "x.png", "width": width, "height": height,
            "bboxes": [{"class": "mitochondrion", "x1": a, "y1": b, "x2": c, "y2": d} for a, b, c, d in boxes]}


def config_for(*argv: str) -> Config:
    return train.config_from_args(train.build_parser().parse_args(["-p", "annotations.txt", *argv]))


def test_auto_is_scratch_without_weights_and_paper_with_them():
    assert recipes.resolve("auto", has_imagenet_weights=False) == "scratch"
    assert recipes.resolve("auto", has_imagenet_weights=True) == "paper"
    assert recipes.resolve("paper", has_imagenet_weights=False) == "paper"
    with pytest.raises(CryoError, match="unknown recipe"):
        recipes.resolve("fast", False)


def test_default_command_line_gets_the_scratch_recipe():
    cfg = config_for()
    scratch = recipes.ScratchRecipe()
    assert cfg.recipe == "scratch"
    for field in dataclasses.fields(scratch):
        assert getattr(cfg, field.name) == getattr(scratch, field.name), field.name
    assert (cfg.train_mode, cfg.use_horizontal_flips, cfg.rot_90) == ("joint", True, True)
    assert cfg.lr_warmup_steps > 0 and cfg.lr_drop_fraction > 0


def test_paper_recipe_is_every_config_default():
    cfg = config_for("--recipe", "paper")
    paper = Config()
    bookkeeping = {"annotation_path", "model_path", "recipe"}
    different = [f.name for f in dataclasses.fields(Config)
                 if f.name not in bookkeeping and getattr(cfg, f.name) != getattr(paper, f.name)]
    assert different == [] and cfg.recipe == "paper"
    assert (cfg.train_mode, cfg.learning_rate, cfg.lr_warmup_steps, cfg.lr_drop_fraction) == ("alternating", 1e-5, 0, 0.0)


def test_command_line_options_override_the_recipe():
    cfg = config_for("--train-mode", "alternating", "--no-hf", "--learning-rate", "3e-5", "--lr-warmup", "0",
                     "--lr-drop", "0", "--im-size", "512")
    assert cfg.recipe == "scratch"
    assert (cfg.train_mode, cfg.use_horizontal_flips, cfg.use_vertical_flips) == ("alternating", False, True)
    assert (cfg.learning_rate, cfg.lr_warmup_steps, cfg.lr_drop_fraction, cfg.im_size) == (3e-5, 0, 0.0, 512)
    assert config_for("--recipe", "paper", "--hf").use_horizontal_flips is True
    with pytest.raises(CryoError, match="--lr-warmup"):
        config_for("--lr-warmup", "-1")
    with pytest.raises(CryoError, match="--learning-rate"):
        config_for("--learning-rate", "0")


def test_small_objects_enlarge_the_images_and_refit_the_anchors():
    # 400 x 300 images, boxes of 24-40 px (median 32 px = 2 cells): enlarged 1.5x to 3 cells, anchors fitted
    boxes = [(10, 10, 10 + s, 10 + s) for s in (24, 28, 32, 36, 40)]
    cfg = Config()
    notes = recipes.fit_to_boxes(cfg, [record(400, 300, boxes)])
    assert cfg.im_size == 480                                   # 300 x 1.5 = 450, rounded up to a multiple of 32
    assert cfg.im_max_size == 640                               # the 4:3 aspect kept
    tiny = Config()                                             # 1-cell boxes: enlarged at most 2x
    recipes.fit_to_boxes(tiny, [record(400, 300, [(0, 0, 16, 16)])], fit_anchors=False)
    assert tiny.im_size == 608                                  # 300 x 2 = 600 -> 608
    assert max(cfg.anchor_box_scales) < 128 and min(cfg.anchor_box_scales) >= cfg.rpn_stride
    assert any("fitted to the boxes" in n and "for only 0 %" in n for n in notes)


def test_wide_objects_shrink_the_images_by_at_most_a_quarter_and_good_anchors_are_kept():
    # 100-px boxes in 384-px images are 6.25 cells: shrunk towards 3 cells, by at most 3/4
    cfg = Config()
    recipes.fit_to_boxes(cfg, [record(384, 384, [(0, 0, 100, 100), (200, 200, 300, 300)])], fit_anchors=False)
    assert cfg.im_size == 288
    # 64-px boxes in 768-px images are 4 cells: 3/4 makes them 3 (Lucchi++: 800 -> 576 px)
    lucchi = Config()
    recipes.fit_to_boxes(lucchi, [record(1024, 768, [(0, 0, 64, 64)])], fit_anchors=False)
    assert (lucchi.im_size, lucchi.im_max_size) == (576, 768)
    # 45-px boxes in 480-px images are 2.8 cells: enlarged a little, to 3 cells
    near = Config()
    recipes.fit_to_boxes(near, [record(480, 480, [(0, 0, 45, 45)])], fit_anchors=False)
    assert near.im_size == 512                                  # 480 x 3 / 2.8125 = 512
    big = Config()
    notes = recipes.fit_to_boxes(big, [record(600, 600, [(0, 0, 128, 128), (100, 100, 356, 356)])], fit_size=False)
    assert big.anchor_box_scales == [128.0, 256.0, 512.0] and any("anchors: kept" in n for n in notes)


def test_large_objects_shrink_the_images():
    # 3708-px images with 600-px mitochondria (37 cells): shrunk until the median box is 8 cells
    cfg = Config()
    recipes.fit_to_boxes(cfg, [record(3838, 3708, [(0, 0, 600, 600), (1000, 1000, 1600, 1600)])], fit_anchors=False)
    assert cfg.im_size == 800                                   # 3708 * 128 / 600 = 791 -> 800


def test_crowded_images_raise_the_detection_cap():
    cfg = Config()
    crowded = [(x, y, x + 40, y + 40) for x in range(0, 1000, 50) for y in range(0, 200, 50)]   # 80 boxes
    notes = recipes.fit_to_boxes(cfg, [record(1000, 1000, crowded)], fit_size=False, fit_anchors=False)
    assert cfg.max_detections == 240 and any("240" in n for n in notes)
    sparse = Config()
    recipes.fit_to_boxes(sparse, [record(100, 100, [(0, 0, 50, 50)])], fit_size=False, fit_anchors=False)
    assert sparse.max_detections == Config().max_detections


def test_anchor_match_fraction_by_hand():
    # a 64x64 box (at im_size = image size) against a single 128-px square anchor: IoU 0.25 -> unmatched;
    # a 100x100 box: 0.61 -> matched
    cfg = Config(anchor_box_scales=[128.0], anchor_box_ratios=[[1.0, 1.0]], im_size=400, im_max_size=0)
    records = [record(400, 400, [(0, 0, 64, 64), (0, 0, 100, 100)])]
    assert recipes.anchor_match_fraction(records, cfg) == 0.5


def test_warm_up_then_drop():
    cfg = toy_config(learning_rate=1e-4, lr_warmup_steps=4, lr_drop_fraction=0.5)
    rates = [train.scheduled_learning_rate(cfg, 0.0, step) for step in range(6)]
    assert rates == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert train.scheduled_learning_rate(cfg, 0.6, 10) == pytest.approx(1e-5)
    assert train.scheduled_learning_rate(cfg, 0.6) == pytest.approx(1e-5)


def test_warm_up_is_cut_short_by_its_share_of_the_run():
    """A slow run (few images per minute) leaves the ramp once lr_warmup_max_fraction of its time has
    passed: the rate follows the larger of the two ramps and never exceeds the learning rate."""
    cfg = toy_config(learning_rate=1e-4, lr_warmup_steps=100, lr_warmup_max_fraction=0.05)
    assert train.scheduled_learning_rate(cfg, 0.0, 0) == pytest.approx(1e-6)            # step ramp
    assert train.scheduled_learning_rate(cfg, 0.025, 9) == pytest.approx(5e-5)          # time ramp
    assert train.scheduled_learning_rate(cfg, 0.06, 10) == pytest.approx(1e-4)          # cap passed
    assert train.scheduled_learning_rate(cfg, 0.01, 59) == pytest.approx(6e-5)          # steps lead
    off = toy_config(learning_rate=1e-4, lr_warmup_steps=100)
    assert train.scheduled_learning_rate(off, 0.06, 10) == pytest.approx(1.1e-5)
    assert recipes.config_for("scratch").lr_warmup_max_fraction == 0.05
    assert recipes.config_for("paper").lr_warmup_max_fraction == 0.0


def test_scratch_models_refine_tomogram_boxes_along_z_and_the_paper_does_not():
    scratch, paper = recipes.config_for("scratch"), recipes.config_for("paper")
    assert (scratch.track_refine_window, scratch.track_rescore) == (2, True)
    assert (paper.track_refine_window, paper.track_rescore, paper.track_untracked_weight) == (0, False, 1.0)


def test_scratch_models_train_the_rpn_on_anchors_over_the_edge_and_the_paper_does_not():
    assert recipes.config_for("scratch").rpn_ignore_cross_boundary is False
    assert recipes.config_for("paper").rpn_ignore_cross_boundary is True
    assert config_for("--set", "rpn_ignore_cross_boundary=true").rpn_ignore_cross_boundary is True


def test_scratch_models_save_the_weights_moving_average_and_the_paper_does_not():
    assert recipes.config_for("scratch").weight_ema_decay == 0.999
    assert recipes.config_for("paper").weight_ema_decay == 0.0
    assert config_for("--set", "weight_ema_decay=0").weight_ema_decay == 0.0


def test_scratch_models_skip_proposals_the_rpn_rejects_and_the_paper_does_not():
    assert recipes.config_for("scratch").rpn_min_score_test == 0.05
    assert recipes.config_for("paper").rpn_min_score_test == 0.0


def test_slabs_only_when_every_training_image_has_its_tomogram(tmp_path):
    from keras_frcnn_cryo import simple_parser, synthetic
    data = synthetic.write_dataset(str(tmp_path / "synth"), 2, seed=4, shape=(8, 48, 48), slice_step=4,
                                   pixel_size_a=120.0, progress=False)
    records = simple_parser.get_data(data["annotations"])[0]
    cfg = Config(input_channels="slabs")
    note = recipes.fit_input_channels(cfg, records)
    assert cfg.input_channels == "slabs" and f"all {len(records)} training images" in note
    os.remove(records[0]["filepath"] + ".json")
    note = recipes.fit_input_channels(cfg, records)
    assert cfg.input_channels == "repeat" and "has no sidecar" in note
    assert "repeated" in recipes.fit_input_channels(Config(), records)


def test_rois_per_step_and_backbone_norm_follow_the_recipe_unless_given():
    def parsed(*extra: str) -> Config:
        return train.config_from_args(train.build_parser().parse_args(["-p", "annotations.txt", *extra]))

    assert parsed().num_rois == recipes.ScratchRecipe().num_rois
    assert parsed("--recipe", "paper").num_rois == Config().num_rois == 32       # keras-frcnn's -n
    assert parsed("-n", "8").num_rois == 8 and parsed("--recipe", "paper", "-n", "8").num_rois == 8
    assert parsed().backbone_norm == "auto" and parsed("--backbone-norm", "ws").backbone_norm == "ws"


def test_rois_per_step_follow_the_objects_per_image():
    """16 RoIs (half of the paper's 32) only when a median image's boxes fit their positive share (8)."""
    few = recipes.config_for()
    assert few.num_rois == 32
    notes = recipes.fit_to_boxes(few, [record(300, 300, [(0, 0, 60, 60), (100, 100, 160, 160)])] * 3,
                                 fit_size=False, fit_anchors=False)
    assert few.num_rois == recipes.FEW_OBJECTS_ROIS == 16 and any("RoIs per step: 16 instead of 32" in n for n in notes)
    dense = recipes.config_for()
    crowded = [(x, 0, x + 20, 20) for x in range(0, 300, 25)]                 # 12 boxes per image
    notes = recipes.fit_to_boxes(dense, [record(300, 300, crowded)] * 3, fit_size=False, fit_anchors=False)
    assert dense.num_rois == 32 and any("more than the 8 positive RoIs" in n for n in notes)
    given = recipes.config_for(num_rois=32)
    recipes.fit_to_boxes(given, [record(300, 300, [(0, 0, 60, 60)])], fit_size=False, fit_anchors=False, fit_rois=False)
    assert given.num_rois == 32                                  # -n given: the recipe leaves it alone


def test_prepare_fits_rois_unless_the_command_line_gave_them(toy_dataset, tmp_path):
    for fit_rois, expected in ((True, 16), (False, 32)):
        cfg = recipes.config_for(annotation_path=toy_dataset)
        train.prepare(cfg, split_file=str(tmp_path / "split.json"), fit_rois=fit_rois)
        assert cfg.num_rois == expected, fit_rois


def test_scratch_models_drop_boxes_beyond_the_lamella_and_the_paper_does_not():
    assert recipes.config_for("scratch").track_clip_to_specimen is True
    assert recipes.config_for("paper").track_clip_to_specimen is False
    assert config_for("--set", "track_clip_to_specimen=false").track_clip_to_specimen is False
