"""Tests for keras_frcnn_cryo.splits."""
from __future__ import annotations

import json
import logging
import os

import pytest

from keras_frcnn_cryo.errors import CryoError
from keras_frcnn_cryo.splits import assign_splits, default_split_path, image_group, record_groups


def _records(names, directory="/data", group=""):
    return [{"filepath": os.path.join(directory, name), "bboxes": [], "group": group} for name in names]


def _stack(tomos, slices=5):
    return _records([f"{tomo}_z{index:03d}.png" for tomo in tomos for index in range(slices)])


@pytest.mark.parametrize(
    "path, group",
    [
        ("tomo01_z012.png", "tomo01"),
        ("tomo01-0012.png", "tomo01"),
        ("TS_03_slice_0040.png", "TS_03"),
        ("cellA_t07.png", "cellA"),
        ("/x/y/ts01_-54.0.tif", "ts01"),
        ("tomo01.png", "tomo01"),
        ("mitochondria.png", "mitochondria"),
        ("/data/tomoB/0012.png", "tomoB"),
        ("/data/tomoC/slice_0040.png", "tomoC"),
    ],
)
def test_image_group(path, group):
    assert image_group(path) == group


def test_record_groups_prefers_given_group_and_file_stems_decide():
    records = _records(["a_z1.png"], group="G") + _records(["b_z1.png"])
    assert record_groups(records) == ["G", "b"]
    # one tomogram's slices and tilts in two folders stay one group (folders are not tomograms here)
    both = _records(["tomo03_z006.png", "tomo04_z001.png"], "/d/slices") + _records(["tomo03_tilt05.png"], "/d/tilts")
    assert record_groups(both) == ["tomo03", "tomo04", "tomo03"]


def test_record_groups_index_only_names_take_their_folders():
    assert record_groups(_records(["0001.png"], "/d/tomoA") + _records(["0001.png"], "/d/tomoB")) == ["tomoA", "tomoB"]
    # folders of the same name: their paths below the common folder
    alike = _records(["0001.png", "0002.png"], "/d/a/tomo") + _records(["0001.png"], "/d/b/tomo")
    assert record_groups(alike) == ["a/tomo", "a/tomo", "b/tomo"]


def test_default_split_path(tmp_path):
    assert default_split_path("/data/ann.txt") == "/data/ann.split.json"
    assert default_split_path(str(tmp_path)) == str(tmp_path / "split.json")
    assert default_split_path(str(tmp_path) + "/") == str(tmp_path / "split.json")


def test_slices_of_one_tomogram_never_straddle(tmp_path):
    tomos = [f"tomo{index:02d}" for index in range(12)]
    records = _stack(tomos)
    mapping = assign_splits(records, str(tmp_path / "s.json"), 1 / 6, 1 / 6, seed=3)
    by_tomo: dict[str, set] = {}
    for record in records:
        by_tomo.setdefault(image_group(record["filepath"]), set()).add(record["imageset"])
    assert all(len(splits) == 1 for splits in by_tomo.values())
    tomo_splits = [next(iter(s)) for s in by_tomo.values()]
    assert (tomo_splits.count("test"), tomo_splits.count("val"), tomo_splits.count("train")) == (2, 2, 8)
    assert mapping == {os.path.basename(r["filepath"]): r["imageset"] for r in records}
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["method"] == "group" and saved["seed"] == 3
    assert saved["images"] == mapping
    assert set(saved["groups"]) == set(tomos)


def test_same_seed_same_split_other_seed_differs(tmp_path):
    tomos = [f"t{index}" for index in range(20)]
    first = assign_splits(_stack(tomos, 2), str(tmp_path / "a.json"), 0.25, 0.0, seed=7)
    second = assign_splits(list(reversed(_stack(tomos, 2))), str(tmp_path / "b.json"), 0.25, 0.0, seed=7)
    assert first == second  # independent of record order
    others = [assign_splits(_stack(tomos, 2), str(tmp_path / f"c{s}.json"), 0.25, 0.0, seed=s) for s in (1, 2, 3)]
    assert any(other != first for other in others)


def test_persisted_file_is_reused_exactly(tmp_path, caplog):
    path = str(tmp_path / "split.json")
    tomos = ["ta", "tb", "tc", "td", "te", "tf"]
    first = assign_splits(_stack(tomos), path, 1 / 6, 0.0, seed=1)
    before = (tmp_path / "split.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="keras_frcnn_cryo.splits"):
        again = assign_splits(_stack(tomos), path, 0.5, None, seed=99)  # other seed and test fraction
    assert again == first
    assert (tmp_path / "split.json").read_bytes() == before
    assert "reusing" in caplog.text
    # a new slice of a known tomogram follows its tomogram
    grown = _stack(tomos) + _records(["tc_z999.png"])
    mapping = assign_splits(grown, path, 1 / 6, 0.0, seed=1)
    assert mapping["tc_z999.png"] == first["tc_z000.png"]


def test_new_validation_share_keeps_the_persisted_test_set(tmp_path):
    path = str(tmp_path / "split.json")
    tomos = [f"t{i}" for i in range(12)]
    first = assign_splits(_stack(tomos), path, 1 / 6, 0.0, seed=1)
    second = assign_splits(_stack(tomos), path, 1 / 6, 0.25, seed=1)
    assert {k for k, v in first.items() if v == "test"} == {k for k, v in second.items() if v == "test"}
    val_groups = {k.split("_")[0] for k, v in second.items() if v == "val"}
    assert len(val_groups) == 3                                  # ceil(0.25 * 12) groups, whole tomograms
    assert json.loads((tmp_path / "split.json").read_text())["val_fraction"] == 0.25
    # None means "whatever the file says"
    assert assign_splits(_stack(tomos), path, 1 / 6, None, seed=1) == second


def test_persisted_file_with_other_groups_is_refused(tmp_path):
    path = str(tmp_path / "split.json")
    assign_splits(_stack(["ta", "tb", "tc"]), path, 0.3, 0.0, seed=1)
    with pytest.raises(CryoError, match="split.json: .*other image groups.*delete it"):
        assign_splits(_stack(["ta", "tb", "tx"]), path, 0.3, 0.0, seed=1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CryoError, match="bad.json: not a valid split file"):
        assign_splits(_stack(["ta"]), str(tmp_path / "bad.json"), 0.3, 0.0, seed=1)


def test_contiguous_fallback_for_a_single_tomogram(tmp_path):
    records = _records([f"tomo01_z{index}.png" for index in range(12)])  # unpadded: natural order matters
    mapping = assign_splits(records, str(tmp_path / "s.json"), 0.25, 0.25, seed=0)
    expected = {f"tomo01_z{index}.png": "train" if index < 6 else "val" if index < 9 else "test" for index in range(12)}
    assert mapping == expected
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["method"] == "contiguous" and saved["groups"] == {"tomo01": "mixed"}
    # reuse: an image not in the file cannot be placed
    with pytest.raises(CryoError, match="does not assign"):
        assign_splits(records + _records(["tomo01_z99.png"]), str(tmp_path / "s.json"), 0.25, 0.25, seed=0)


def test_two_groups_one_test_and_tiny_counts(tmp_path):
    mapping = assign_splits(_stack(["ta", "tb"], 1), str(tmp_path / "a.json"), 0.1, 0.1, seed=5)
    assert sorted(mapping.values()) == ["test", "train"]
    single = assign_splits(_records(["only.png"]), str(tmp_path / "b.json"), 0.2, 0.0, seed=5)
    assert single == {"only.png": "train"}
    no_test = assign_splits(_stack(["ta", "tb", "tc"], 1), str(tmp_path / "c.json"), 0.0, 0.0, seed=5)
    assert set(no_test.values()) == {"train"}


def test_voc_imagesets_keep_test_and_split_trainval(tmp_path):
    records = _stack(["ta", "tb", "tc", "td"], 3)
    for record in records:
        record["imageset"] = "test" if image_group(record["filepath"]) == "td" else "trainval"
    mapping = assign_splits(records, str(tmp_path / "s.json"), 0.5, 0.3, seed=2)
    groups = {}
    for name, split in mapping.items():
        groups.setdefault(image_group(name), set()).add(split)
    assert groups["td"] == {"test"}
    others = [next(iter(groups[g])) for g in ("ta", "tb", "tc")]
    assert all(len(groups[g]) == 1 for g in ("ta", "tb", "tc"))
    assert sorted(others) == ["train", "train", "val"]  # test_fraction ignored: ImageSets decide test
    assert json.loads((tmp_path / "s.json").read_text())["method"] == "imageset"


def test_voc_imagesets_straddling_group_warns(tmp_path):
    records = _stack(["ta", "tb"], 2)
    for index, record in enumerate(records):
        record["imageset"] = "test" if index == 0 else "trainval"
    with pytest.warns(UserWarning, match="both trainval and test"):
        assign_splits(records, str(tmp_path / "s.json"), 0.2, 0.0, seed=1)
    assert records[0]["imageset"] == "test"


def test_bad_fractions_and_colliding_basenames(tmp_path):
    with pytest.raises(CryoError, match="test_fraction"):
        assign_splits(_stack(["ta"]), str(tmp_path / "x.json"), 1.0, 0.0, seed=1)
    with pytest.raises(CryoError, match="below 1"):
        assign_splits(_stack(["ta"]), str(tmp_path / "x.json"), 0.6, 0.5, seed=1)
    records = _records(["s_z1.png"], "/d/tomoA") + _records(["s_z1.png"], "/d/tomoB")
    mapping = assign_splits(records, str(tmp_path / "y.json"), 0.5, 0.0, seed=1)
    assert set(mapping) == {"tomoA/s_z1.png", "tomoB/s_z1.png"}
    assert sorted(mapping.values()) == ["test", "train"]


def test_names_without_slice_index_warn(tmp_path):
    records = _records(["alpha.png", "beta.png", "gamma.png"])
    with pytest.warns(UserWarning, match="no slice index"):
        mapping = assign_splits(records, str(tmp_path / "s.json"), 0.3, 0.0, seed=1)
    assert sorted(mapping.values()) == ["test", "train", "train"]
