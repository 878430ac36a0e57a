"""Property tests of every transform: boxes stay inside the image and keep framing the rectangle of their
class colour, the box count never grows (except in Mosaic / MixUp), seeded runs repeat exactly, and the
input sample's image is never modified in place."""

from __future__ import annotations

import numpy as np
import pytest

from rtdet.data.loader import unletterbox
from rtdet.data.mixing import CachedMixUp, CachedMosaic, MixUp, Mosaic
from rtdet.data.transforms import (
    Compose,
    FilterBoxes,
    IoUCrop,
    LetterBox,
    Pad,
    PhotometricDistort,
    PipelineConfigError,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    RandomHSV,
    RandomResize,
    Resize,
    YOLOXHSVRandomAug,
    ZoomOut,
    box_candidates,
    build_transform,
)
from tests.data.datahelpers import assert_boxes_frame_colours, colour_mask, rect_sample

RECTS = [(10, 12, 60, 70, 0), (90, 30, 150, 100, 1), (120, 5, 158, 25, 2), (0, 90, 30, 120, 3)]


def sample():
    return rect_sample(120, 160, RECTS)


def run(t, s, seed):
    t.rng = np.random.default_rng(seed)
    return t(s)


# transforms that keep every box that keeps some area (so every coloured pixel is inside a box), with the
# tolerance (px) between a box and the extent of its colour: 0.5 for integer moves, more where pixels are
# interpolated (edges blend) or sheared (sharp corners lose their tips)
LOSSLESS = {
    "LetterBox": (lambda: LetterBox(96), 1.5),
    "LetterBox-up": (lambda: LetterBox((200, 300)), 1.5),
    "Resize": (lambda: Resize(200), 1.5),
    "Pad": (lambda: Pad(200, center=True), 0.5),
    "RandomFlip-h": (lambda: RandomFlip(1.0), 0.5),
    "RandomFlip-v": (lambda: RandomFlip(1.0, "vertical"), 0.5),
    "RandomResize": (lambda: RandomResize(160, scale=1.0, ratio_range=(0.6, 2.0)), 1.5),
    "RandomCrop": (lambda: RandomCrop(80), 0.5),
    "ZoomOut": (lambda: ZoomOut(p=1.0), 0.5),
    "RandomAffine-scale": (lambda: RandomAffine(160, translate=0.2, scale=0.5, wh_thr=0, area_thr=0), 1.5),
    "RandomAffine-nofilter": (lambda: RandomAffine(160, degrees=20, translate=0.1, scale=0.3, shear=5,
                                                   wh_thr=0, area_thr=0, ar_thr=1e9), 4.0),
    "RandomAffine-perspective": (lambda: RandomAffine(160, degrees=10, perspective=0.0005, wh_thr=0, area_thr=0,
                                                      ar_thr=1e9), 4.0),
}
# transforms that also drop boxes that are still partly visible (so only tightness is checked)
LOSSY = {
    "RandomAffine": lambda: RandomAffine(160, degrees=30, translate=0.2, scale=0.5, shear=10),
    "IoUCrop": lambda: IoUCrop(p=1.0),
    "RandomCrop-area": lambda: RandomCrop(70, min_area_ratio=0.5),
    "FilterBoxes": lambda: FilterBoxes(min_size=25),
}
COLOUR = {
    "RandomHSV": lambda: RandomHSV(0.015, 0.7, 0.4),
    "YOLOXHSVRandomAug": lambda: YOLOXHSVRandomAug(),
    "PhotometricDistort": lambda: PhotometricDistort(p=1.0),
}


@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_geometric_transforms_keep_boxes_on_their_pixels(name):
    for seed in range(4):
        s0 = sample()
        img0 = s0["img"]
        before = img0.copy()
        make, tol = LOSSLESS[name]
        out = run(make(), s0, seed)
        assert np.array_equal(img0, before), "input image modified in place"
        assert len(out["cls"]) <= len(RECTS)
        assert_boxes_frame_colours(out, tight_tol=tol)


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_lossy_transforms_keep_surviving_boxes_on_their_pixels(name):
    kept = 0
    for seed in range(6):
        out = run(LOSSY[name](), sample(), seed)
        assert len(out["cls"]) <= len(RECTS)
        kept += len(out["cls"])
        assert_boxes_frame_colours(out, coverage=False, tight_tol=4.0 if name.startswith("RandomAffine") else 2.5)
    assert kept > 0


@pytest.mark.parametrize("name", sorted(LOSSLESS) + sorted(LOSSY) + sorted(COLOUR))
def test_seeded_runs_repeat(name):
    make = {**{k: v[0] for k, v in LOSSLESS.items()}, **LOSSY, **COLOUR}[name]
    a, b = run(make(), sample(), 7), run(make(), sample(), 7)
    assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["bboxes"], b["bboxes"])
    assert np.array_equal(a["cls"], b["cls"])


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_colour_transforms_change_pixels_not_boxes(name):
    changed = False
    for seed in range(4):
        s0 = sample()
        img0 = s0["img"]
        before = img0.copy()
        out = run(COLOUR[name](), s0, seed)
        assert np.array_equal(img0, before), "input image modified in place"
        assert out["img"].shape == before.shape and out["img"].dtype == np.uint8
        assert np.array_equal(out["bboxes"], np.array([r[:4] for r in RECTS], np.float32))
        changed |= not np.array_equal(out["img"], before)
    assert changed


def test_letterbox_ratio_pad_maps_original_boxes_exactly():
    s = rect_sample(120, 160, RECTS)
    orig = s["bboxes"].copy()
    out = LetterBox(100)(s)
    assert out["img"].shape == (100, 100, 3)
    (ry, rx), (px, py) = out["ratio_pad"]
    assert (px, py) == (0, 12) and rx == pytest.approx(100 / 160) and ry == pytest.approx(75 / 120)
    np.testing.assert_allclose(out["bboxes"], orig * [rx, ry, rx, ry] + [px, py, px, py], rtol=1e-6)
    np.testing.assert_allclose(unletterbox(out["bboxes"], out["ratio_pad"]), orig, atol=1e-4)
    # a letterbox after a stretch composes into one map
    s2 = Resize(80)(rect_sample(120, 160, RECTS))
    out2 = LetterBox(64)(s2)
    np.testing.assert_allclose(unletterbox(out2["bboxes"], out2["ratio_pad"]), orig, atol=1e-3)


def test_letterbox_pads_with_grey_and_centres():
    out = LetterBox(100, pad_value=114)(rect_sample(50, 100, []))
    assert (out["img"][:25] == 114).all() and (out["img"][75:] == 114).all()
    assert not (out["img"][25:75] == 114).all()


def test_flip_is_exact_mirror():
    out = RandomFlip(1.0)(rect_sample(120, 160, RECTS))
    np.testing.assert_array_equal(out["bboxes"][0], [100, 12, 150, 70])
    assert out["ratio_pad"] is None


def test_zero_gain_hsv_is_identity():
    s = sample()
    assert np.array_equal(RandomHSV(0, 0, 0)(dict(s))["img"], s["img"])


def test_yolox_hsv_turns_hue_only_when_asked():
    import cv2

    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = (40, 120, 200)
    h0, s0, v0 = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[0, 0].astype(int)
    turns = set()
    for seed in range(12):
        out = run(YOLOXHSVRandomAug(hue_delta=5, saturation_delta=0, value_delta=0),
                  {"img": img, "cls": np.zeros(0, np.int64), "bboxes": np.zeros((0, 4), np.float32)}, seed)
        h, s_, v = cv2.cvtColor(out["img"], cv2.COLOR_BGR2HSV)[0, 0].astype(int)
        turn = (h - h0 + 90) % 180 - 90
        assert abs(turn) <= 6 and abs(s_ - s0) <= 3 and abs(v - v0) <= 3
        turns.add(turn)
    assert len(turns) > 2


def test_box_candidates_thresholds():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 1]], np.float32)
    after = np.array([[0, 0, 10, 10], [0, 0, 1.5, 10], [0, 0, 3, 3], [0, 0, 100, 1]], np.float32)
    np.testing.assert_array_equal(box_candidates(before, after), [True, False, False, False])


def test_mosaic_tiles_four_images_and_crops_back_with_affine(four_images):
    pipe = Compose([Mosaic(160, p=1.0), RandomAffine(160, scale=0.3, wh_thr=0, area_thr=0, ar_thr=1e9)])
    pipe.bind(four_images)
    grew = False
    for seed in range(4):
        pipe.reseed(seed)
        mosaic = pipe.transforms[0](four_images.load_sample(0))
        assert mosaic["img"].shape == (320, 320, 3) and mosaic["mosaic_border"] == (-80, -80)
        assert_boxes_frame_colours(mosaic, tight_tol=0.5)
        grew |= len(mosaic["cls"]) > 2
        pipe.reseed(seed)
        out = pipe(four_images.load_sample(0))
        assert out["img"].shape == (160, 160, 3)
        assert_boxes_frame_colours(out, tight_tol=1.0)
    assert grew


def test_cached_mosaic_uses_the_cache_and_pops(four_images):
    t = CachedMosaic(160, max_cached_images=5, random_pop=False)
    t.rng = np.random.default_rng(0)
    outs = [t(four_images.load_sample(i % 4)) for i in range(8)]
    assert all(o["img"].shape == (120, 160, 3) for o in outs[:4])  # <= 4 cached: unchanged
    assert all(o["img"].shape == (320, 320, 3) for o in outs[4:])
    assert len(t._cache) == 5
    for o in outs[4:]:
        assert_boxes_frame_colours(o, tight_tol=0.5)
    assert max(len(o["cls"]) for o in outs[4:]) > 2


def test_mixup_adds_the_partner_boxes(four_images):
    black = rect_sample(120, 160, [])
    t = MixUp(p=1.0, alpha=1e4)  # r ~ 0.5
    Compose([t]).bind(four_images)
    t.rng = np.random.default_rng(1)
    out = t(black)
    assert len(out["cls"]) == 2 and out["ratio_pad"] is None
    assert_boxes_frame_colours(out, scale=0.5, tight_tol=2.5)


def test_mixup_keeps_the_main_boxes_unchanged(four_images):
    t = MixUp(p=1.0)
    Compose([t]).bind(four_images)
    t.rng = np.random.default_rng(3)
    main = four_images.load_sample(1)
    out = t(four_images.load_sample(1))
    np.testing.assert_array_equal(out["bboxes"][:2], main["bboxes"])
    assert len(out["cls"]) == 4


def test_cached_mixup_blends_a_cached_sample_with_its_boxes(four_images):
    t = CachedMixUp(160, ratio_range=(0.8, 1.2), max_cached_images=4, p=1.0)
    t.rng = np.random.default_rng(0)
    for i in range(4):
        t(four_images.load_sample(i))
    added = 0
    for seed in range(4):
        t.rng = np.random.default_rng(seed)
        out = t(rect_sample(120, 160, []))
        assert out["img"].shape == (120, 160, 3)
        added += len(out["cls"])
        assert_boxes_frame_colours(out, scale=0.5, coverage=False)
    assert added > 0


def test_iou_crop_drops_boxes_whose_centre_is_outside():
    s = rect_sample(120, 160, RECTS)
    t = IoUCrop(p=1.0, sampler_options=(0.0,))
    for seed in range(5):
        out = run(t, rect_sample(120, 160, RECTS), seed)
        h, w = out["img"].shape[:2]
        assert h < 120 or w < 160
        # every kept class had its centre inside: its colour is visible in the crop
        for c in out["cls"]:
            assert colour_mask(out["img"], int(c)).any()
    assert len(s["cls"]) == 4


def test_filter_boxes_min_size_and_aspect():
    s = rect_sample(120, 160, [(0, 0, 50, 2, 0), (10, 10, 60, 60, 1), (70, 10, 160, 14, 2)])
    out = FilterBoxes(min_size=3, max_aspect_ratio=10)(s)
    np.testing.assert_array_equal(out["cls"], [1])


def test_registry_builds_by_name_and_rejects_typos():
    t = build_transform({"name": "LetterBox", "center": False}, imgsz=320)
    assert isinstance(t, LetterBox) and t.imgsz == (320, 320) and t.center is False
    with pytest.raises(PipelineConfigError, match="Did you mean LetterBox"):
        build_transform({"name": "Letterbox"}, 320)
    with pytest.raises(PipelineConfigError, match="unknown argument.*'scal'"):
        build_transform({"name": "RandomAffine", "scal": 0.5}, 320)
    with pytest.raises(PipelineConfigError, match="direction"):
        build_transform({"name": "RandomFlip", "direction": "diagonal"}, 320)


@pytest.mark.parametrize("make", [lambda: RandomAffine(160, translate=0.1, scale=0.5, wh_thr=0, area_thr=0),
                                  lambda: RandomResize(160, scale=1.0, ratio_range=(0.5, 2.0)),
                                  lambda: LetterBox(257)])
def test_resampling_moves_boxes_with_subpixel_accuracy(make):
    """The centre of mass of a rectangle's pixels stays at its box centre (pixel i covers [i, i+1))."""
    for seed in range(4):
        out = run(make(), rect_sample(120, 160, [(50, 40, 90, 70, 2)]), seed)  # class 2: red, channel 2 of BGR
        img = out["img"].astype(np.float64)
        wgt = np.clip(img[..., 2] - img[..., 1], 0, None)  # redness: zero on black and on grey padding
        ys, xs = np.mgrid[: wgt.shape[0], : wgt.shape[1]] + 0.5
        cx, cy = (wgt * xs).sum() / wgt.sum(), (wgt * ys).sum() / wgt.sum()
        b = out["bboxes"][0]
        assert abs(cx - (b[0] + b[2]) / 2) < 0.15 and abs(cy - (b[1] + b[3]) / 2) < 0.15
