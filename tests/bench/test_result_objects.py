"""``python -m bench.result_objects``: every choice of objects is written and measured
(the numbers are printed, never asserted)."""

from __future__ import annotations

from bench.result_objects import CHOICES, measure


def test_every_choice_of_objects_is_timed_with_what_it_wrote() -> None:
    decoded, written = measure(repeat=1, boxes=2, rows=320, columns=256)
    assert decoded.name == "decode_dicom" and decoded.median_ms > 0
    assert [row.name for row in written] == [",".join(k.value for k in c) for c in CHOICES]
    assert all(row.best_ms > 0 and row.median_ms >= row.best_ms for row in written)
    sizes = {row.name: row.size for row in written}
    assert all(size > 0 for size in sizes.values())
    assert sizes["sr,gsps"] > max(sizes["sr"], sizes["gsps"])  # both files, not one
    assert sizes["sc"] > 256 * 320 * 3  # the canonical image's RGB pixels, boxes burned in
