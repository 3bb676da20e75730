"""Pictures of detections: boxes drawn on the pixels they cover, in class colours; the display
threshold; true against predicted boxes; montages; z projections; PNGs written atomically."""
import cv2
import numpy as np
import pytest
from conftest import no_temp_files, objects3d

from keras_frcnn_cryo import pictures


def test_render_overlay_draws_boxes_in_class_colours(tmp_path):
    image = np.linspace(-3.0, 5.0, 120 * 160, dtype=np.float32).reshape(120, 160)
    picture = pictures.render_overlay(image, np.array([[20, 30, 60, 90]], float), [1], [0.87], ["mito", "vesicle"])
    assert picture.shape == (120, 160, 3) and picture.dtype == np.uint8
    colour = pictures.class_colour(1)
    assert tuple(picture[60, 20]) == colour             # left edge x1 = 20
    assert tuple(picture[60, 59]) == colour             # right edge x2 - 1 = 59
    assert tuple(picture[89, 40]) == colour             # bottom edge y2 - 1 = 89
    inside = picture[60, 40]
    assert inside[0] == inside[1] == inside[2]          # untouched grey inside the box
    assert tuple(picture[60, 100]) != colour
    # the display threshold hides weaker boxes (the CSV may hold them all)
    plain = pictures.render_overlay(image, np.zeros((0, 4)), [], [], ["mito", "vesicle"])
    hidden = pictures.render_overlay(image, np.array([[20, 30, 60, 90]], float), [1], [0.87], ["mito", "vesicle"],
                                    min_score=0.9)
    np.testing.assert_array_equal(hidden, plain)
    path = tmp_path / "overlay.png"
    pictures.write_png(path, picture)
    decoded = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, picture)
    with pytest.raises(ValueError):
        pictures.write_png(path, image)
    assert no_temp_files(tmp_path)


def test_render_z_projection_labelsobjects3d():
    projection = np.full((100, 200), 128, np.uint8)
    picture = pictures.render_z_projection(projection, objects3d())
    assert picture.shape == (100, 200, 3)
    assert tuple(picture[40, 10]) == pictures.class_colour(0)    # mito: x1 = 10, y from 20 to 60
    assert tuple(picture[25, 140]) == pictures.class_colour(1)   # vesicle: x2 = 140.75 -> column 140
    assert tuple(picture[95, 190]) == (128, 128, 128)


def test_render_comparison_draws_true_and_predicted_boxes_and_a_title():
    image = np.full((120, 160), 100, np.uint8)
    picture = pictures.render_comparison(image, np.array([[10, 40, 50, 100]], float),
                                         np.array([[80, 40, 140, 100]], float), [0.91], title="tomo_04_z0013")
    assert picture.shape == (120, 160, 3) and picture.dtype == np.uint8
    assert tuple(picture[70, 10]) == pictures.TRUE_COLOUR          # true box, left edge x1 = 10
    assert tuple(picture[70, 139]) == pictures.PREDICTED_COLOUR    # predicted box, right edge x2 - 1 = 139
    assert tuple(picture[70, 60]) == (100, 100, 100)               # between the boxes: untouched
    band = max(14, 120 // 16)
    top = picture[:band]
    assert (top == 255).any() and (top[:, :, 0] == 0).mean() > 0.5    # white title on a black band
    untitled = pictures.render_comparison(image, np.zeros((0, 4)), np.zeros((0, 4)), [])
    np.testing.assert_array_equal(untitled, np.repeat(image[:, :, None], 3, axis=2))


def test_render_montage_tiles_resizes_and_captions():
    red = np.zeros((40, 60, 3), np.uint8)
    red[:, :, 2] = 255
    small_blue = np.zeros((20, 30, 3), np.uint8)
    small_blue[:, :, 0] = 255
    sheet = pictures.render_montage([red, small_blue, red], columns=2, caption="green: true")
    gap, band = 2, 24
    assert sheet.shape == (2 * (40 + gap) + band, 2 * (60 + gap), 3)
    assert tuple(sheet[10, 10]) == (0, 0, 255)                     # row 0, column 0
    assert tuple(sheet[10, 62 + 10]) == (255, 0, 0)                # row 0, column 1: resized to 40 x 60
    assert tuple(sheet[42 + 10, 10]) == (0, 0, 255)                # row 1, column 0
    assert not sheet[42 + 10, 62 + 10].any()                       # row 1, column 1: empty
    assert (sheet[-band:] == 255).any()                            # the caption
    assert pictures.render_montage([red], columns=3).shape == (42, 62, 3)
    with pytest.raises(ValueError):
        pictures.render_montage([])
