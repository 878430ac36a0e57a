"""The synthetic tracking clip: seeded, boxes on the drawn shapes, identities that move smoothly."""

import cv2
import numpy as np

from rtdet.data.synthetic_tracks import render_track_clip, write_mot, write_video


def test_the_clip_is_seeded_and_its_boxes_follow_the_shapes(tmp_path):
    frames, gt = render_track_clip(n_frames=12, n_objects=3, imgsz=96, seed=4)
    again, gt2 = render_track_clip(n_frames=12, n_objects=3, imgsz=96, seed=4)
    assert np.array_equal(gt, gt2) and all(np.array_equal(a, b) for a, b in zip(frames, again))
    assert len(frames) == 12 and frames[0].shape == (96, 96, 3) and len(gt) == 12 * 3
    assert (gt[:, 3:5] >= 0).all() and (gt[:, 5:7] <= 96).all()
    for i in (1, 2, 3):  # every identity moves at most speed 3 px (rounded) per frame, in every frame
        path = gt[gt[:, 1] == i]
        assert path[:, 0].tolist() == list(range(1, 13))
        assert np.abs(np.diff(path[:, 3])).max() <= 4.0
    x1, y1, x2, y2 = gt[0, 3:7].astype(int)  # the box holds the shape's colour, the frame around it less so
    inside = frames[0][y1:y2, x1:x2].astype(float)
    assert inside.std() > 10


def test_the_clip_and_its_ground_truth_are_written(tmp_path):
    frames, gt = render_track_clip(n_frames=6, n_objects=2, imgsz=64, seed=0)
    video = write_video(tmp_path / "clip.avi", frames, fps=10)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    rows = [line.split(",") for line in write_mot(tmp_path / "gt.txt", gt).read_text().splitlines()]
    assert len(rows) == 12 and all(len(r) == 9 and r[6:] == ["1", "1", "1"] for r in rows)
    assert float(rows[0][4]) == gt[0, 5] - gt[0, 3]  # width, not x2
