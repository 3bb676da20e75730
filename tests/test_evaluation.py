"""measure_map (evaluation.main) on hand-made ground truth and detection CSVs with known answers.

Everything runs in-process with ``--detections``: no model is built or loaded.
"""
import json
import math

import cv2
import numpy as np
import pytest

from keras_frcnn_cryo import evaluation, reports
from keras_frcnn_cryo.cli import run_cli
from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.splits import assign_splits
from keras_frcnn_cryo.annotations import load_annotations

THRESHOLDS = ("0.5", "0.6", "0.7", "0.8", "0.9")
HEADER = "image,x1,y1,x2,y2,class,score\n"

# Two tomograms (groups tomoA, tomoB) of two 16x16 slices; 3 mito and 1 vesicle; tomoB_z01 is empty.
ANNOTATIONS = """images/tomoA_z00.png,2,2,10,10,mito
images/tomoA_z00.png,10,10,15,15,vesicle
images/tomoA_z01.png,3,3,11,11,mito
images/tomoB_z00.png,1,1,8,8,mito
images/tomoB_z01.png,,,,,
"""
PERFECT = HEADER + """tomoA_z00.png,2,2,10,10,mito,0.9
tomoA_z00.png,10,10,15,15,vesicle,0.8
tomoA_z01.png,3,3,11,11,mito,0.7
tomoB_z00.png,1,1,8,8,mito,0.95
"""
# No vesicle; the lowest-scoring mito box covers 6 of the 8 rows of its object: IoU 48/64 = 0.75.
SHIFTED = HEADER + """tomoA_z00.png,2,2,10,8,mito,0.5
tomoA_z01.png,3,3,11,11,mito,0.7
tomoB_z00.png,1,1,8,8,mito,0.95
"""


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("tomoA_z00", "tomoA_z01", "tomoB_z00", "tomoB_z01"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((16, 16), np.uint8))
    (tmp_path / "ann.txt").write_text(ANNOTATIONS)
    (tmp_path / "perfect.csv").write_text(PERFECT)
    (tmp_path / "shifted.csv").write_text(SHIFTED)
    return tmp_path


def run(tmp_path, *extra, detections="perfect.csv", annotations="ann.txt", split="all"):
    """evaluation.main on parsed arguments; returns the metrics.json payload."""
    out = tmp_path / "out"
    argv = ["--detections", str(tmp_path / detections), "-p", str(tmp_path / annotations),
            *(["--split", split] if split else []), "--output", str(out), *map(str, extra)]
    args = evaluation.build_parser().parse_args(argv)
    assert evaluation.main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def test_perfect_detections_score_one_everywhere(data, capsys):
    payload = run(data)
    for t in THRESHOLDS:
        assert payload["mAP"]["ap"][t] == 1.0
        for name in ("mito", "vesicle"):
            assert payload["classes"][name]["ap"][t] == 1.0
            assert payload["classes"][name]["f1"][t] == 1.0
    assert payload["mAP"]["coco_ap"] == pytest.approx(1.0)
    assert payload["mAP"]["miou"] == pytest.approx(1.0)
    # best-F1 score cut of mito: its lowest score (all three boxes are needed for recall 1)
    assert payload["classes"]["mito"]["best_threshold"]["0.7"] == pytest.approx(0.7)
    assert payload["n_detections"] == 4 and payload["n_images"] == 4 and payload["split"] == "all"
    table = capsys.readouterr().out
    assert "AP@.5:.95" in table and "score@F1" in table and "mAP" in table


def test_missing_class_gives_zero_and_iou_dependent_ap(data):
    payload = run(data, detections="shifted.csv")
    vesicle, mito = payload["classes"]["vesicle"], payload["classes"]["mito"]
    assert all(vesicle["ap"][t] == 0.0 for t in THRESHOLDS)
    assert vesicle["f1"]["0.5"] == 0.0 and vesicle["miou"] is None
    # mito: TP, TP, then the IoU-0.75 box: a TP up to 0.7, an FP from 0.8 (VOC AP = 2/3 by hand)
    assert [mito["ap"][t] for t in THRESHOLDS] == pytest.approx([1, 1, 1, 2 / 3, 2 / 3])
    assert mito["miou"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert [payload["mAP"]["ap"][t] for t in THRESHOLDS] == pytest.approx([0.5, 0.5, 0.5, 1 / 3, 1 / 3])


def test_json_keys_and_outputs(data):
    payload = run(data, "--pr-iou", 0.7, 0.75, "--json", data / "copy.json")
    assert set(payload["mAP"]["ap"]) == set(THRESHOLDS)
    assert set(payload["classes"]) == {"mito", "vesicle"}
    for row in (payload["mAP"], *payload["classes"].values()):
        assert {"ap", "f1", "precision", "recall", "best_threshold", "miou", "coco_ap", "ap50", "ap75"} <= set(row)
    assert json.loads((data / "copy.json").read_text()) == payload
    out = data / "out"
    assert (out / "pr_iou0.7.png").is_file() and (out / "pr_iou0.75.png").is_file()
    assert "| mAP |" in (out / "metrics.md").read_text()
    assert "runs" not in payload and "objects3d" not in payload


def test_per_group_table(data, capsys):
    payload = run(data, detections="shifted.csv")
    groups = payload["per_group"]
    assert set(groups) == {"tomoA", "tomoB"}
    assert groups["tomoA"]["n_images"] == 2 and groups["tomoA"]["n_gt"] == 3
    assert groups["tomoB"]["n_images"] == 2 and groups["tomoB"]["n_gt"] == 1
    # tomoA at IoU 0.7: mito AP 1 (both boxes match), vesicle AP 0 -> mean 0.5; mito mIoU (1 + 0.75) / 2
    assert groups["tomoA"]["ap"] == pytest.approx(0.5)
    assert groups["tomoA"]["per_class"]["mito"]["miou"] == pytest.approx(0.875)
    assert groups["tomoB"]["ap"] == 1.0 and groups["tomoB"]["f1"] == 1.0
    printed = capsys.readouterr().out
    assert "Per tomogram" in printed and "tomoA" in printed and "tomoB" in printed
    assert "Box errors of the true positives at IoU 0.5" in printed
    assert "Where AP@0.7 is lost" in printed
    assert payload["classes"]["mito"]["errors"]["0.7"]["ap"] == pytest.approx(payload["classes"]["mito"]["ap"]["0.7"])
    assert payload["classes"]["mito"]["box_error"]["n"] == payload["classes"]["mito"]["n_miou"]


def test_per_group_table_reports_the_estimated_snr(data, capsys):
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.standard_normal((64, 64)), (0, 0), 3)
    for name in ("tomoA_z00", "tomoA_z01"):                       # structure: high SNR
        image = 128 + 400 * smooth + rng.normal(0, 3, (64, 64))
        cv2.imwrite(str(data / "images" / f"{name}.png"), np.clip(image, 0, 255).astype(np.uint8))
    for name in ("tomoB_z00", "tomoB_z01"):                       # white noise only: SNR about 0
        cv2.imwrite(str(data / "images" / f"{name}.png"), rng.integers(0, 256, (64, 64)).astype(np.uint8))
    groups = run(data)["per_group"]
    assert groups["tomoA"]["snr_estimate"] > 1.0 > 0.1 > groups["tomoB"]["snr_estimate"]
    assert "SNR est." in capsys.readouterr().out


def test_groups_from_the_annotation_column(data):
    text = "".join(line + ",cellX\n" for line in ANNOTATIONS.splitlines())
    (data / "grouped.txt").write_text(text)
    payload = run(data, annotations="grouped.txt")
    assert set(payload["per_group"]) == {"cellX"} and payload["per_group"]["cellX"]["n_images"] == 4


def test_ablation_table_has_both_runs(data, capsys):
    payload = run(data, "--compare", data / "shifted.csv", "--labels", "with preprocessing", "without")
    assert set(payload["runs"]) == {"with preprocessing", "without"}
    assert payload["runs"]["with preprocessing"]["mAP"]["ap"]["0.8"] == 1.0
    assert payload["runs"]["without"]["mAP"]["ap"]["0.8"] == pytest.approx(1 / 3)
    assert payload["mAP"]["ap"]["0.5"] == 1.0  # top level: the first run
    printed = capsys.readouterr().out
    comparison = printed[printed.index("Comparison"):]
    rows = [line for line in comparison.splitlines() if line.startswith("mAP")]
    assert any("with preprocessing" in r and "1.000" in r for r in rows)
    assert any(" without " in r and "0.333" in r for r in rows)
    assert any("Δ" in r and "+0.667" in r for r in rows)  # AP@0.8: 1 - 1/3
    markdown = (data / "out" / "metrics.md").read_text()
    assert "## Comparison" in markdown and "| mAP | without |" in markdown
    assert (data / "out" / "pr_iou0.7.png").is_file()


def _training_split(data):
    """The split file training would write beside the annotations (measure_map.py only reads it)."""
    records, _, _ = load_annotations(str(data / "ann.txt"), "simple")
    assign_splits(records, str(data / "split.json"), 1 / 6, 0.0, 42)
    return data / "split.json"


def test_split_drops_detections_of_other_groups(data):
    payload = run(data, "--split-file", _training_split(data), split="test")
    (group,) = payload["per_group"]  # two groups, test fraction 1/6: one test group
    assert payload["n_images"] == 2
    assert payload["n_detections"] == {"tomoA": 3, "tomoB": 1}[group]
    assert payload["mAP"]["ap"]["0.5"] == 1.0


def test_csv_paths_match_by_file_name_with_comments(data):
    rows = PERFECT.splitlines()
    text = "# written by hand\n" + rows[0] + "\n" + "\n".join("some/dir/" + r for r in rows[1:]) + "\n"
    (data / "prefixed.csv").write_text(text)
    assert run(data, detections="prefixed.csv")["mAP"]["ap"]["0.9"] == 1.0


# ------------------------------------------------------------------------------------------
# bad input: one CryoError naming the file (and line)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    ("image,x1,y1,x2,y2,score\ntomoA_z00.png,2,2,10,10,0.9\n", ("lacks column(s) class",)),
    (HEADER + "tomoA_z00.png,2,2,10,10,mito,nan\n", ("bad.csv:2", "'score' is not a finite number")),
    (HEADER + "tomoA_z00.png,2,2,10,10,mito,0.9\ntomoA_z01.png,2,two,10,10,mito,0.9\n",
     ("bad.csv:3", "'y1' is not a number")),
    (HEADER + "tomoA_z00.png,10,2,2,10,mito,0.9\n", ("bad.csv:2", "x2 < x1")),
    (HEADER + "tomoA_z00.png,2,2,10,10,,0.9\n", ("bad.csv:2", "empty class")),
    (HEADER + "tomoA_z00.png,2,2,10,10,mito\n", ("bad.csv:2", "fields")),
    ("", ("bad.csv", "empty detections file")),
])
def test_bad_detections_file(data, text, needles):
    (data / "bad.csv").write_text(text)
    with pytest.raises(CryoError) as info:
        run(data, detections="bad.csv")
    message = str(info.value)
    assert "bad.csv" in message and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_detections_file(data):
    with pytest.raises(CryoError, match="absent.csv"):
        run(data, detections="absent.csv")


@pytest.mark.filterwarnings("ignore:.*no boxes at all")
def test_ground_truth_without_objects(data):
    (data / "empty.txt").write_text("images/tomoA_z00.png,,,,,\nimages/tomoB_z00.png,,,,,\n")
    with pytest.raises(CryoError, match="empty.txt.*no .*objects"):
        run(data, annotations="empty.txt")


def test_split_without_images(data):
    # default fractions: test 1/6, val 0 -> the val split is empty
    with pytest.raises(CryoError, match="split.json.*val split has no images"):
        run(data, "--split-file", _training_split(data), split="val")


def test_without_a_split_file_every_image_is_evaluated_and_nothing_written(data, capsys):
    before = sorted(p.name for p in data.iterdir())
    payload = run(data, split=None)
    assert payload["split"] == "all" and payload["n_images"] == 4
    assert "no split file" in capsys.readouterr().out
    assert sorted(p.name for p in data.iterdir()) == sorted(before + ["out"])   # no split file in the data folder
    with pytest.raises(CryoError, match=r"ann\.split\.json.*no split file to take the test split from"):
        run(data, split="test")
    _training_split(data)
    (data / "split.json").rename(data / "ann.split.json")       # where training writes it by default
    assert run(data, split=None)["split"] == "test"


def test_detections_of_images_without_ground_truth_are_reported(data, capsys):
    (data / "extra.csv").write_text(PERFECT + "nosuch.png,2,2,10,10,mito,0.9\nnosuch.png,3,3,9,9,mito,0.8\n")
    payload = run(data, detections="extra.csv")
    assert payload["mAP"]["ap"]["0.9"] == 1.0
    out = capsys.readouterr().out
    assert "2 detections on 1 image(s) that are not in the ground truth (e.g. nosuch.png)" in out


def test_compare_file_is_checked_too(data):
    (data / "bad.csv").write_text(HEADER + "tomoA_z00.png,2,2,10,10,mito,inf\n")
    with pytest.raises(CryoError, match="bad.csv:2"):
        run(data, "--compare", data / "bad.csv")


def test_command_line_exit_status_and_one_line(data, capsys):
    (data / "bad.csv").write_text(HEADER + "tomoA_z00.png,2,2,10,10,mito,nan\n")
    argv = ["--detections", str(data / "bad.csv"), "-p", str(data / "ann.txt"), "--split", "all",
            "--output", str(data / "out")]
    assert run_cli(evaluation.main, evaluation.build_parser(), argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bad.csv:2" in err[0]


# ------------------------------------------------------------------------------------------
# 3D objects
# ------------------------------------------------------------------------------------------
GT3D = """tomogram,class,x1,y1,z1,x2,y2,z2,incomplete
tomo_00,mito,0,0,0,10,10,10,0
tomo_00,mito,20,20,20,30,30,30,1
tomo_01,mito,0,0,0,10,10,10,0
"""
# tomo_00: exact match, and an object 4 of 10 slices deep (IoU 0.4); tomo_01: IoU 0.6, and a miss
PRED3D = """# written by hand
tomogram,class,score,x1,y1,z1,x2,y2,z2
tomo_00,mito,0.9,0,0,0,10,10,10
tomo_00,mito,0.8,20,20,20,30,30,24
tomo_01,mito,0.5,0,0,0,10,10,6
tomo_01,mito,0.4,50,50,50,60,60,60
"""


def test_objects_3d(data, capsys):
    (data / "gt3d.csv").write_text(GT3D)
    (data / "pred3d.csv").write_text(PRED3D)
    payload = run(data, "--objects3d", data / "pred3d.csv", "--gt3d", data / "gt3d.csv")
    at = payload["objects3d"]["classes"]["mito"]
    assert (at["0.5"]["tp"], at["0.5"]["fp"], at["0.5"]["fn"]) == (2, 2, 1)
    assert (at["0.7"]["tp"], at["0.7"]["fp"], at["0.7"]["fn"]) == (1, 3, 2)
    assert at["0.5"]["precision"] == pytest.approx(0.5) and at["0.5"]["recall"] == pytest.approx(2 / 3)
    assert at["0.5"]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert at["0.5"]["n_incomplete"] == 1
    assert payload["objects3d"]["all"]["0.7"]["tp"] == 1
    assert "3D objects" in capsys.readouterr().out


def test_objects_3d_tomogram_from_file_name(data):
    (data / "gt3d.csv").write_text(GT3D)
    rows = [line.split(",", 1)[1] for line in PRED3D.splitlines()[1:] if line.startswith(("tomogram", "tomo_01"))]
    (data / "tomo_01.csv").write_text("\n".join(rows) + "\n")
    payload = run(data, "--objects3d", data / "tomo_01.csv", "--gt3d", data / "gt3d.csv")
    counts = payload["objects3d"]["all"]["0.5"]
    # tomo_01's prediction matches; tomo_00's two objects have no prediction
    assert (counts["tp"], counts["fp"], counts["fn"]) == (1, 1, 2)


def test_objects_3d_without_tomogram_is_an_error(data):
    (data / "gt3d.csv").write_text(GT3D)
    (data / "objects.csv").write_text("class,score,x1,y1,z1,x2,y2,z2\nmito,0.9,0,0,0,10,10,10\n")
    with pytest.raises(CryoError, match="objects.csv.*tomogram"):
        run(data, "--objects3d", data / "objects.csv", "--gt3d", data / "gt3d.csv")
    with pytest.raises(CryoError, match="--gt3d"):
        run(data, "--objects3d", data / "objects.csv")


def test_evaluate_objects_3d_against_brute_force():
    """Per-tomogram matching: a box never matches an object of another tomogram or class."""
    gt = [{"tomogram": "a", "class": "m", "box": np.array([0, 0, 0, 4, 4, 4.0]), "incomplete": False},
          {"tomogram": "b", "class": "m", "box": np.array([0, 0, 0, 4, 4, 4.0]), "incomplete": False},
          {"tomogram": "a", "class": "v", "box": np.array([8, 8, 8, 10, 10, 10.0]), "incomplete": False}]
    pred = [{"tomogram": "a", "class": "m", "box": np.array([0, 0, 0, 4, 4, 4.0]), "score": 0.9},
            {"tomogram": "a", "class": "m", "box": np.array([0, 0, 0, 4, 4, 4.0]), "score": 0.8},  # duplicate
            {"tomogram": "a", "class": "m", "box": np.array([8, 8, 8, 10, 10, 10.0]), "score": 0.7}]  # wrong class
    result = evaluation.evaluate_objects_3d(pred, gt, (0.5,))
    m, v = result["classes"]["m"][0.5], result["classes"]["v"][0.5]
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 1)
    assert (v["tp"], v["fp"], v["fn"]) == (0, 0, 1) and math.isnan(v["precision"]) and v["recall"] == 0.0


def test_objects_3d_ap_ranks_by_object_score():
    """Counts take every object whatever its score; AP ranks them over all tomograms, so a false
    object scored above the true ones costs AP, and the best F1 cuts it off when it scores lowest."""
    gt = [{"tomogram": name, "class": "m", "box": np.array([0, 0, 0, 10, 10, 10.0]), "incomplete": False}
          for name in ("a", "b")]
    def pred(false_score):
        return [{"tomogram": "a", "class": "m", "box": np.array([0, 0, 0, 10, 10, 10.0]), "score": 0.9},
                {"tomogram": "b", "class": "m", "box": np.array([0, 0, 1, 10, 10, 10.0]), "score": 0.5},
                {"tomogram": "b", "class": "m", "box": np.array([50, 50, 0, 60, 60, 10.0]), "score": false_score}]
    high = evaluation.evaluate_objects_3d(pred(0.95), gt)
    low = evaluation.evaluate_objects_3d(pred(0.1), gt)
    assert high["iou_thresholds"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    for t in (0.5, 0.9):                          # IoU 0.9 of the second object: still a TP at 0.9
        assert (high["all"][t]["tp"], high["all"][t]["fp"]) == (low["all"][t]["tp"], low["all"][t]["fp"]) == (2, 1)
        assert high["all"][t]["ap"] == pytest.approx(2 / 3) and low["all"][t]["ap"] == pytest.approx(1.0)
    assert low["classes"]["m"][0.5]["best_f1"] == 1.0 and low["classes"]["m"][0.5]["best_threshold"] == 0.5
    assert high["classes"]["m"][0.5]["f1"] == pytest.approx(0.8)
    table = reports.format_objects_3d(high)
    assert "AP" in table.splitlines()[0] and "0.667" in table


def test_library_evaluate_matches_the_command_and_writes_nothing(data):
    """evaluation.evaluate (the library call under measure_map.py and the demo) gives the command's
    payload for the same inputs, and writes no file until write_evaluation is called."""
    before = sorted(p.name for p in data.iterdir())
    result = evaluation.evaluate(str(data / "ann.txt"), [("a", str(data / "shifted.csv")),
                                                         ("b", str(data / "perfect.csv"))], split="all")
    assert sorted(p.name for p in data.iterdir()) == before
    assert [run.label for run in result.runs] == ["a", "b"] and result.n_objects == 4
    payload = result.payload()
    expected = run(data, "--compare", data / "perfect.csv", "--labels", "a", "b", detections="shifted.csv")
    assert payload["runs"]["a"]["mAP"] == expected["runs"]["a"]["mAP"]
    assert payload["runs"]["b"]["mAP"]["ap"]["0.9"] == 1.0 and payload["mAP"]["ap"]["0.9"] < 1.0
    assert "## Comparison" in result.text(markdown=True) and "Comparison (a vs b)" in result.text()
    written = evaluation.write_evaluation(result, str(data / "lib"))
    assert [p.rsplit("/", 1)[1] for p in written] == ["metrics.json", "metrics.md", "pr_iou0.7.png"]
    assert json.loads((data / "lib" / "metrics.json").read_text())["runs"]["b"]["mAP"]["ap"]["0.9"] == 1.0


def test_tomogram_outputs_are_scored_on_their_labelled_slices(data, capsys):
    """A test_frcnn.py output folder with NAME_boxes2d.csv (a tomogram detected whole) and a
    detections.csv (images): measure_map scores the labelled PNGs of tomogram NAME, found through
    their sidecars, with the tomogram's boxes, and the other images with the CSV's."""
    from keras_frcnn_cryo import tomo_io, writers

    for z in (0, 1):
        tomo_io.write_sidecar(str(data / "images" / f"tomoA_z0{z}.png"),
                              tomo_io.slice_sidecar("../tomograms/tomoA.mrc", "tomogram", z, (5, 16, 16), (16, 16),
                                                    None))
    out = data / "tomo_out"
    out.mkdir()
    writers.write_boxes2d_csv(str(out / "tomoA_boxes2d.csv"), [
        {"slice": 0, "x1": 2, "y1": 2, "x2": 10, "y2": 10, "class": "mito", "score": 0.9},
        {"slice": 0, "x1": 10, "y1": 10, "x2": 15, "y2": 15, "class": "vesicle", "score": 0.8},
        {"slice": 1, "x1": 3, "y1": 3, "x2": 11, "y2": 11, "class": "mito", "score": 0.7},
        {"slice": 3, "x1": 3, "y1": 3, "x2": 11, "y2": 11, "class": "mito", "score": 0.99}])   # unlabelled slice
    (out / "detections.csv").write_text(HEADER + "tomoB_z00.png,1,1,8,8,mito,0.95\n")
    payload = run(data, detections="tomo_out")
    assert payload["n_detections"] == 4
    assert all(payload["mAP"]["ap"][t] == 1.0 for t in THRESHOLDS)
    assert "1 tomogram(s)" in capsys.readouterr().out


def test_objects_3d_from_test_frcnn_output_folder(data, capsys):
    """--objects3d FOLDER reads every NAME_objects3d.csv test_frcnn.py wrote (NAME = the tomogram);
    a tomogram without 3D ground truth is named in a note and left out."""
    (data / "gt3d.csv").write_text(GT3D)
    out = data / "results"
    out.mkdir()
    lines = PRED3D.splitlines()[1:]
    for name in ("tomo_00", "tomo_01"):
        rows = [line.split(",", 1)[1] for line in lines if line.startswith(("tomogram", name))]
        (out / f"{name}_objects3d.csv").write_text("\n".join(rows) + "\n")
    (out / "tomo_09_objects3d.csv").write_text("class,score,x1,y1,z1,x2,y2,z2\nmito,0.9,0,0,0,10,10,10\n")
    (out / "tomo_00_boxes2d.csv").write_text("slice,x1,y1,x2,y2,class,score\n")       # not read here
    payload = run(data, "--objects3d", out, "--gt3d", data / "gt3d.csv")
    at = payload["objects3d"]["classes"]["mito"]
    assert (at["0.5"]["tp"], at["0.5"]["fp"], at["0.5"]["fn"]) == (2, 2, 1)       # as the one-file test
    assert "tomo_09" in capsys.readouterr().out
    single = run(data, "--objects3d", out / "tomo_01_objects3d.csv", "--gt3d", data / "gt3d.csv")
    assert single["objects3d"]["all"]["0.5"]["tp"] == 1
    empty = data / "empty"
    empty.mkdir()
    with pytest.raises(CryoError, match="objects3d.csv"):
        run(data, "--objects3d", empty, "--gt3d", data / "gt3d.csv")
