"""Referee: the pointing game, IoU and Otsu segmentation against a port of CheXlocalize's own
evaluation code, and the chance level of coarse maps against a Monte-Carlo simulation.

The port below follows rajpurkarlab/cheXlocalize (MIT licence) at commit 2a79492 (evaluation
files last changed in 1d4855e): ``eval.py`` (``get_hitrates``: the first maximum in row-major
order; ``calculate_iou``) and ``heatmap_to_segmentation.py`` (``cam_to_segmentation``: min-max,
``np.uint8(255 * mask)``, Otsu, contours redrawn as filled PIL polygons). Their maps are first
resized to the image (bilinear); ours are scored at the model's input geometry, where the
regions are brought, so the port is applied to the maps as they are.
"""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers.saliency import attribution, regions as L


# ------------------------------------------------------------------ the port (their code, numpy)


def port_hit(sal_map, gt_mask):
    """eval.py, get_hitrates: x, y = unravel_index(argmax); hit if gt_mask[x][y] == 1."""
    x, y = np.unravel_index(np.argmax(sal_map, axis=None), sal_map.shape)
    if gt_mask[x][y] == 1:
        return 1.0
    return np.nan if np.sum(gt_mask) == 0 else 0.0


def port_iou(pred_mask, gt_mask, true_pos_only=True):
    """eval.py, calculate_iou."""
    intersection = np.logical_and(pred_mask, gt_mask)
    union = np.logical_or(pred_mask, gt_mask)
    if true_pos_only:
        if np.sum(pred_mask) == 0 or np.sum(gt_mask) == 0:
            return np.nan
        return np.sum(intersection) / np.sum(union)
    if np.sum(union) == 0:
        return np.nan
    return np.sum(intersection) / np.sum(union)


def port_segmentation(cam_mask, threshold=np.nan):
    """heatmap_to_segmentation.py, cam_to_segmentation (no smoothing)."""
    mask = cam_mask - cam_mask.min()
    mask = mask / mask.max()
    if np.isnan(threshold):
        mask = np.uint8(255 * mask)
        maxval = np.max(mask)
        thresh = cv2.threshold(mask, 0, int(maxval), cv2.THRESH_OTSU)[1]
        cnts = cv2.findContours(thresh, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        cnts = cnts[0] if len(cnts) == 2 else cnts[1]
        polygons = [[list(pt[0]) for pt in c] for c in cnts if len(c) > 1]
        out = Image.new("L", (cam_mask.shape[1], cam_mask.shape[0]), 0)
        for poly in polygons:
            ImageDraw.Draw(out).polygon([tuple(int(v) for v in p) for p in poly], outline=1, fill=1)
        return np.array(out, dtype="int")
    return np.array(mask > threshold, dtype="int")


# ------------------------------------------------------------------ inputs


def _maps_and_masks(n=60, S=32, seed=0, smooth=True):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, S, S)).astype(np.float32)
    if smooth:
        maps = np.stack([cv2.GaussianBlur(m, (0, 0), 3) for m in maps])
    maps = L.normalise(maps)
    masks = np.zeros((n, S, S), bool)
    for i in range(n):
        r, c = rng.integers(0, S - 8, 2)
        h, w = rng.integers(3, 12, 2)
        masks[i, r:r + h, c:c + w] = True
    return maps, masks


def test_hit_equals_chexlocalize_on_unique_maxima():
    maps, masks = _maps_and_masks()
    flat = maps.reshape(len(maps), -1)
    assert ((flat == flat.max(1, keepdims=True)).sum(1) == 1).all()  # unique maxima
    ours = L.pointing_game(maps, masks)
    ref = np.array([port_hit(m, g) for m, g in zip(maps, masks)])
    np.testing.assert_array_equal(ours, ref)


def test_literal_hit_equals_chexlocalize_on_ties_and_constant_maps():
    maps, masks = _maps_and_masks(seed=1)
    maps[:10] = 0.0  # constant: their first pixel (0, 0)
    maps[10:20] = np.round(maps[10:20], 1)  # plateaus of tied maxima
    masks[:5, 0, 0] = True
    ours = L.literal_hit(maps, masks)
    ref = np.array([port_hit(m, g) for m, g in zip(maps, masks)])
    np.testing.assert_array_equal(ours, ref)
    assert ours[:5].tolist() == [1.0] * 5  # a constant map "hits" when (0, 0) is inside


@pytest.mark.parametrize("t", L.THRESHOLD_GRID)
def test_iou_at_a_threshold_equals_chexlocalize(t):
    maps, masks = _maps_and_masks(seed=2)
    ours = L.iou(maps, masks, t)
    for m, g, v in zip(maps, masks, ours):
        ref = port_iou(port_segmentation(m, t), g, true_pos_only=False)
        assert v == pytest.approx(0.0 if np.isnan(ref) else ref)


def test_otsu_segmentation_equals_chexlocalize():
    maps, masks = _maps_and_masks(seed=3)
    ours = L.otsu_segmentation(maps)
    for m, o in zip(maps, ours):
        np.testing.assert_array_equal(o, port_segmentation(m).astype(bool))
    st = L.pair_stats(maps, masks)
    ref = np.array([port_iou(port_segmentation(m), g) for m, g in zip(maps, masks)])
    np.testing.assert_allclose(st["iou_literal"], ref)  # true_pos_only=True: NaN where undefined


def test_upsampling_is_the_methods_own():
    grids = np.random.default_rng(4).random((5, 10, 10)).astype(np.float32)
    ours = L.upsample_grid(grids, 160)
    theirs = attribution.scale(grids, 160)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_grid_chance_matches_a_monte_carlo_of_random_grid_maps():
    S, g = 64, 8
    rng = np.random.default_rng(5)
    masks = np.zeros((30, S, S), bool)
    for i in range(30):
        r, c = rng.integers(0, S - 20, 2)
        masks[i, r:r + 20, c:c + 14] = True
    chance = L.grid_chance(masks, g)
    sims = np.mean([L.pointing_game(L.reference_maps("random grid", masks, seed=s, grid=g), masks)
                    for s in range(150)], axis=0)
    assert abs(sims.mean() - chance.mean()) < 0.01
    assert np.abs(sims - chance).max() < 0.08  # per pair, 150 draws


def test_coarse_maps_have_a_chance_level_below_the_area_fraction():
    """A 10 x 10 grid upsampled to 160 px peaks near cell centres and in edge strips: a region
    in the interior is hit by chance less often than its area fraction says."""
    S, g = 160, 10
    m = np.zeros((1, S, S), bool)
    m[0, 40:120, 30:110] = True
    ratio = L.grid_chance(m, g)[0] / L.area_fraction(m)[0]
    assert 0.3 < ratio < 0.98
    assert L.grid_chance(m, None)[0] == pytest.approx(L.area_fraction(m)[0])
    w = L.peak_weights(g, S)
    assert w.sum() == pytest.approx(1.0) and w[:8].sum() > w[76:84].sum()  # the top strip


def test_degenerate_maps_score_their_chance_level():
    maps, masks = _maps_and_masks(seed=6)
    maps[:4] = 0.0
    chance = L.grid_chance(masks, 8)
    st = L.pair_stats(maps, masks, chance)
    np.testing.assert_allclose(st["hit"][:4], chance[:4])
    assert st["degenerate"][:4].all() and not st["degenerate"][4:].any()
