"""Reading a calibration folder: choice of images, corrupt files skipped with a count, one-line errors."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from calibration.images import read_calibration_images, spread_order
from runtime.errors import UserError


def write_images(folder, make_image, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(make_image(40 + 7 * i, 60 + 5 * i, seed=i)).save(folder / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")


def test_reads_jpeg_and_png_of_any_size_recursively(tmp_path, make_image):
    write_images(tmp_path / "a", make_image, 3)
    write_images(tmp_path / "a" / "sub", make_image, 3, start=3)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    got = read_calibration_images(tmp_path / "a", count=10, progress=False)
    assert got.names() == [f"img_{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(3)] + \
        [f"sub/img_{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(3, 6)]
    assert got.skipped == [] and got.available == 6
    img = got.load(4)
    assert img.dtype == np.uint8 and img.shape == (40 + 28, 60 + 20, 3)


def test_count_takes_images_spread_over_the_folder(tmp_path, make_image):
    write_images(tmp_path, make_image, 9)
    got = read_calibration_images(tmp_path, count=3, progress=False)
    assert [p.name for p in got.paths] == ["img_00.jpg", "img_04.jpg", "img_08.jpg"]
    assert spread_order(5, 2) == [0, 4, 1, 2, 3]


def test_digest_follows_content_and_choice(tmp_path, make_image):
    write_images(tmp_path, make_image, 5)
    a = read_calibration_images(tmp_path, count=5, progress=False)
    assert read_calibration_images(tmp_path, count=5, progress=False).digest == a.digest
    assert read_calibration_images(tmp_path, count=4, progress=False).digest != a.digest
    Image.fromarray(make_image(50, 50, seed=99)).save(tmp_path / "img_02.jpg")
    assert read_calibration_images(tmp_path, count=5, progress=False).digest != a.digest


def test_corrupt_images_are_skipped_with_a_count(tmp_path, make_image, caplog):
    write_images(tmp_path, make_image, 5)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    good = (tmp_path / "img_00.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING):
        got = read_calibration_images(tmp_path, count=8, progress=False)
    assert len(got) == 5
    assert sorted(name for name, _ in got.skipped) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert got.record()["skipped"] == 3 and got.record()["used"] == 5
    assert "skipped 3 unreadable calibration image(s)" in caplog.text


def test_a_skipped_image_is_replaced_by_another(tmp_path, make_image):
    write_images(tmp_path, make_image, 6)
    (tmp_path / "img_00.jpg").write_text("broken")
    got = read_calibration_images(tmp_path, count=3, progress=False)
    assert len(got) == 3 and [n for n, _ in got.skipped] == ["img_00.jpg"]


def assert_one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_too_few_readable_images_is_an_error(tmp_path, make_image):
    write_images(tmp_path, make_image, 2)
    for i in range(4):
        (tmp_path / f"bad_{i}.png").write_text("x")
    with pytest.raises(UserError) as e:
        read_calibration_images(tmp_path, count=8, progress=False)
    assert_one_line(e, "only 2 of 6 images", "are readable", "4 skipped", "at least 4")


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError) as e:
        read_calibration_images(tmp_path, progress=False)
    assert_one_line(e, "has no images", "calibration.make_set")


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(UserError) as e:
        read_calibration_images(tmp_path / "nope", progress=False)
    assert_one_line(e, "does not exist", str(tmp_path / "nope"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(UserError) as e:
        read_calibration_images(tmp_path / "f.png", progress=False)
    assert_one_line(e, "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(tmp_path, make_image):
    write_images(tmp_path / "locked", make_image, 4)
    (tmp_path / "locked").chmod(0)
    try:
        with pytest.raises(UserError) as e:
            read_calibration_images(tmp_path / "locked", progress=False)
        assert_one_line(e, "not readable")
    finally:
        (tmp_path / "locked").chmod(0o755)


# the minimum ``python -m export.build --help`` states for --calib-count ("at least 4")
STATED_MINIMUM = 4


def test_the_minimum_is_exactly_the_stated_one(tmp_path, make_image):
    """At the boundary: the stated minimum of readable images calibrates, one fewer is refused, both
    for a folder with unreadable files and for --calib-count itself."""
    import argparse

    from export.build import check_requests

    write_images(tmp_path / "enough", make_image, STATED_MINIMUM)
    write_images(tmp_path / "short", make_image, STATED_MINIMUM - 1)
    for folder in (tmp_path / "enough", tmp_path / "short"):
        for i in range(3):
            (folder / f"bad_{i}.png").write_text("x")
    assert len(read_calibration_images(tmp_path / "enough", count=8, progress=False).paths) == STATED_MINIMUM
    short = f"only {STATED_MINIMUM - 1} of {STATED_MINIMUM - 1 + 3} images .* at least {STATED_MINIMUM}"
    with pytest.raises(UserError, match=short):
        read_calibration_images(tmp_path / "short", count=8, progress=False)

    def args(count):
        return argparse.Namespace(int8=True, calib_dir=tmp_path, calib_count=count, engines="skip")

    check_requests(args(STATED_MINIMUM))
    with pytest.raises(UserError, match=f"--calib-count {STATED_MINIMUM - 1} is too few"):
        check_requests(args(STATED_MINIMUM - 1))
