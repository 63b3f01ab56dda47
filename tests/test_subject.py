"""The subject's pixels and colour: a pale horse on a dark field is pale, a dark horse on snow is not."""
from __future__ import annotations

import numpy as np
import torch

from latent_ops.concepts import whiteness_labels
from latent_ops.subject import silhouette, subject_colour, subject_pixels


def figure_on_ground(figure: int, ground: int, count: int = 1) -> torch.Tensor:
    """uint8 (count, 3, 32, 32): a grey square of value ``figure`` (rows and columns 10-21) on ``ground``."""
    images = torch.full((count, 3, 32, 32), ground, dtype=torch.uint8)
    images[:, :, 10:22, 10:22] = figure
    return images


def test_the_subject_is_the_figure_not_the_frame():
    images = figure_on_ground(240, 30)
    inside = subject_pixels(images.float() / 127.5 - 1, None)[0]
    assert inside[10:22, 10:22].all() and inside.sum() == 144
    assert silhouette(images.float() / 127.5 - 1)[0, 0, 0] == 0  # the border is the background


def test_subject_colour_reads_the_figure_where_a_whole_picture_mean_reads_the_ground():
    pale_on_dark, dark_on_snow = figure_on_ground(240, 30), figure_on_ground(30, 240)
    brightness, saturation = subject_colour(torch.cat([pale_on_dark, dark_on_snow]), None)
    assert brightness[0] > 0.9 and brightness[1] < 0.15 and np.allclose(saturation, 0)
    whole = torch.cat([pale_on_dark, dark_on_snow]).float().mean((1, 2, 3)) / 255
    assert whole[0] < whole[1]  # what the whole-picture rule (until 2026-12-05) would have called white


def test_a_class_map_keeps_the_subject_and_drops_a_second_figure():
    images = figure_on_ground(240, 30)
    images[:, 0, 2:6, 2:6] = 255  # a small red thing in the corner, as far from the ground as the square
    evidence = torch.zeros(1, 3, 3)
    evidence[0, 1, 1] = 1.0  # the class map points at the centre
    inside = subject_pixels(images.float() / 127.5 - 1, evidence)[0]
    assert inside[14:18, 14:18].all() and not inside[2:6, 2:6].any()
    brightness, _ = subject_colour(images, evidence)
    assert brightness[0] > 0.9


def test_whiteness_labels_take_the_brightest_unsaturated_subjects():
    brightness = np.array([0.95, 0.9, 0.92, 0.2, 0.3, 0.4, 0.5, 0.1, 0.2, 0.3])
    saturation = np.array([0.05, 0.6, 0.05, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1, 0.9])
    labels = whiteness_labels(brightness, saturation, top=0.3)
    assert labels.tolist() == [True, False, True] + [False] * 7  # the saturated bright one is not white


def test_a_blank_picture_or_a_map_with_no_evidence_falls_back_rather_than_reading_zero():
    blank = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)  # no figure: the whole picture is read
    brightness, _ = subject_colour(blank, None)
    assert abs(brightness[0] - 200 / 255) < 1e-6
    images = figure_on_ground(240, 30)  # a map that is nowhere positive: the silhouette alone
    brightness, _ = subject_colour(images, -torch.ones(1, 3, 3))
    assert brightness[0] > 0.9


def test_rising_mass_sees_a_wing_from_the_middle_of_the_back_and_not_a_table():
    from latent_ops.subject import rising_mass

    ground = torch.full((3, 3, 32, 32), 230, dtype=torch.uint8)  # pale sky
    ground[:, :, 14:22, 4:28] = 20  # a dark body...
    ground[:, :, 22:32, 5:8] = ground[:, :, 22:32, 24:27] = 20  # ...on legs
    winged, table, bare = ground.clone(), ground.clone(), ground.clone()
    winged[0, :, 2:14, 13:19] = 20  # a blade rising from the middle of the back
    table[0, :, 4:14, 4:8] = table[0, :, 4:14, 24:28] = 20  # a raised head and tail at the ends
    rise = rising_mass(torch.cat([winged[:1], table[:1], bare[:1]]).float() / 127.5 - 1)
    assert rise[0] > 0.25 and rise[1] == 0 and rise[2] == 0


def test_rising_brightness_tells_a_pale_wing_from_a_dark_blade_and_reads_zero_with_none():
    from latent_ops.subject import rising_brightness

    sky = torch.full((3, 3, 32, 32), 0, dtype=torch.uint8)
    sky[:, 2] = 200  # a blue sky
    sky[:, :, 14:22, 4:28] = 240  # a white body
    pale, dark, bare = sky[:1].clone(), sky[:1].clone(), sky[:1].clone()
    pale[:, :, 2:14, 13:19] = 250  # a white wing rising from the middle of the back
    dark[:, :, 2:14, 13:19] = 10  # a dark blade there
    bright = rising_brightness(torch.cat([pale, dark, bare]).float() / 127.5 - 1)
    assert bright[0] > 0.9 and bright[1] < 0.1 and bright[2] == 0
