"""What an exported graph must prove: the matching of its boxes with the torch path's."""

from __future__ import annotations

import numpy as np

from model_server.parity import match_detections, parity_images

TORCH = np.array([
    [10.0, 10.0, 50.0, 60.0, 0.9, 2.0],
    [100.0, 0.0, 180.0, 0.0, 0.6, 2.0],  # a flat box in the padding, tied with others
    [200.0, 40.0, 260.0, 90.0, 0.4, 1.0],
])


def test_the_same_boxes_in_another_order_match() -> None:
    graph = TORCH[::-1].copy()
    graph[:, :4] += 0.3
    graph[:, 4] += 5e-5
    result = match_detections(TORCH, graph)
    assert isinstance(result, dict) and not result["tie_broken"]
    assert abs(result["box"] - 0.3) < 1e-9 and abs(result["score"] - 5e-5) < 1e-9


def test_a_box_off_by_more_than_half_a_pixel_or_a_score_off_is_refused() -> None:
    moved = TORCH.copy()
    moved[2, 0] += 0.6
    assert "no box within 0.5 px" in match_detections(TORCH, moved)
    rescored = TORCH.copy()
    rescored[0, 4] += 2e-4
    assert "no box within" in match_detections(TORCH, rescored)
    assert match_detections(TORCH, TORCH[:2]) == "2 boxes, the torch path 3"


def test_a_tie_kept_the_other_way_is_named_not_refused() -> None:
    other = TORCH.copy()
    other[1, :4] = [300.0, 0.0, 380.0, 0.0]  # another box of exactly the same score
    assert match_detections(TORCH, other)["tie_broken"] == 1
    other[1, 4] += 5e-5  # not a tie: a different answer
    assert isinstance(match_detections(TORCH, other), str)
    shifted = TORCH.copy()
    shifted[:, [0, 2]] += 8.0  # every box moved by a stride, scores exact: not ties
    assert "ties cannot explain" in match_detections(TORCH, shifted)


def test_check_images_are_drawn_afresh_in_several_shapes() -> None:
    first, second = parity_images(), parity_images()
    assert len({image.shape for image in first}) >= 4
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
