"""Fixtures of the data tests (helpers live in datahelpers.py)."""

from __future__ import annotations

import logging

import pytest

from tests.data.datahelpers import ListDataset, rect_sample


@pytest.fixture(autouse=True)
def _rtdet_logs(caplog):
    caplog.set_level(logging.INFO, logger="rtdet")
    return caplog


@pytest.fixture
def four_images() -> ListDataset:
    """Four 120x160 images, two rectangles each, eight distinct classes/colours in all."""
    rects = [[(10, 12, 60, 70, 0), (90, 30, 150, 100, 1)], [(5, 5, 40, 110, 2), (70, 40, 155, 80, 3)],
             [(30, 20, 120, 60, 4), (20, 75, 60, 115, 5)], [(100, 10, 150, 50, 6), (15, 60, 90, 110, 7)]]
    return ListDataset([rect_sample(120, 160, r, f"img{k}.jpg") for k, r in enumerate(rects)])
