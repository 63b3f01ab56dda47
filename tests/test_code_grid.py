"""The finer code grid: a C x 8 x 8 code whose cells are 4 x 4 pixels, and regions named by their place in the
picture, the same on every grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoencoder.cli import ConfigError
from autoencoder.config import make_config
from autoencoder.models import ModelConfig, build_networks
from latent_ops.images import region_cells
from latent_ops.placement import cells_above
from latent_ops.sampling import region_mask


def test_an_8x8_code_round_trips_and_its_cells_act_locally():
    torch.manual_seed(0)
    config = make_config("smoke", latent_dim=128, spatial_channels=2, code_grid=8, res_blocks=1)
    assert ModelConfig.of(config).code_shape == (2, 8, 8)
    nets = build_networks(config).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    z = nets.encoder(x)
    assert z.shape == (3, 128) and nets.decoder(z).shape == (3, 3, 32, 32)
    moved = z.clone().view(3, 2, 8, 8)
    moved[:, :, 0, 0] += 5.0  # the top-left cell, 4 x 4 pixels
    with torch.no_grad():
        change = (nets.decoder(moved.flatten(1)) - nets.decoder(z)).abs()
    assert change[..., :4, :4].mean() > 0 and change[..., 16:, 16:].max() == 0  # the far quarter is untouched


def test_an_8x8_code_is_checked_like_any_flag():
    with pytest.raises(ConfigError, match="--latent_dim must be 128"):
        make_config("smoke", latent_dim=32, spatial_channels=2, code_grid=8)
    with pytest.raises(ConfigError, match="--code_grid must be one of 4, 8"):
        make_config("smoke", latent_dim=72, spatial_channels=2, code_grid=6)
    with pytest.raises(ConfigError, match="shapes a spatial code"):
        make_config("smoke", latent_dim=64, code_grid=8)
    assert ModelConfig.of(make_config("smoke", latent_dim=32, spatial_channels=2)).code_shape == (2, 4, 4)


@pytest.mark.parametrize("region, rows, cols", [
    ("top", (0, 0.5), (0, 1)), ("bottom", (0.5, 1), (0, 1)), ("left", (0, 1), (0, 0.5)),
    ("right", (0, 1), (0.5, 1)), ("centre", (0.25, 0.75), (0.25, 0.75)), ("above", (0, 0.25), (0, 1)),
    ("all", (0, 1), (0, 1)),
])
def test_a_region_is_the_same_place_in_the_picture_on_both_grids(region, rows, cols):
    for grid in (4, 8):
        cells = region_cells([region], (grid, grid))
        expected = torch.zeros(grid, grid, dtype=torch.bool)
        expected[int(rows[0] * grid):int(rows[1] * grid), int(cols[0] * grid):int(cols[1] * grid)] = True
        assert torch.equal(cells, expected), (region, grid)
        mask = region_mask(region, (3, grid, grid)).reshape(3, grid, grid)
        assert np.array_equal(mask[0] > 0, expected.numpy()) and (mask[0] == mask[2]).all()
    # the same pixels: each 4 x 4 cell's 2 x 2 block of 8 x 8 cells
    coarse, fine = region_cells([region], (4, 4)), region_cells([region], (8, 8))
    assert torch.equal(coarse.repeat_interleave(2, 0).repeat_interleave(2, 1), fine)


def test_wings_above_the_subject_reach_half_the_picture_on_either_grid():
    for grid in (4, 8):
        subject = torch.zeros(1, grid, grid, dtype=torch.bool)
        subject[0, grid - 1, 1] = True  # the subject's top is the bottom row, in one column
        above = cells_above(subject)[0]
        assert above[:, 1].sum() == grid // 2 and above[:, 1][grid // 2 - 1:grid - 1].all()
        assert above[:, 0].sum() == 0  # only the subject's own columns
