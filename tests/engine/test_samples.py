"""Sample predictions: the tiled picture (the end-to-end file is checked by the logger tests)."""

import numpy as np

from rtdet.engine.samples import tile


def test_tile_puts_images_in_a_near_square_grid():
    images = [np.full((4, 6, 3), k, dtype=np.uint8) for k in (1, 2, 3)]
    grid = tile(images)
    assert grid.shape == (8, 12, 3)  # 3 images: 2 x 2 cells, the last one black
    assert grid[0, 0, 0] == 1 and grid[0, 6, 0] == 2 and grid[4, 0, 0] == 3 and grid[4, 6, 0] == 0
