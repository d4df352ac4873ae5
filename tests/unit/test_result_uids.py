"""Result objects written twice from the same inputs: same UIDs, same content but the
creation times (issue 22 item 3); any input of the UID changed: new UIDs."""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace

import pydicom
import pytest

from shared.dicom import decode_dicom
from shared.dicom.results import ResultKind, write_results
from tests.factories import make_dicom, radiograph_pixels
from tests.unit.test_dicom_results import result

# The only elements allowed to differ between two writes: when the object was made.
CREATION_TIMES = {
    "InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate",
    "PresentationCreationTime", "PresentationCreationDate", "TimeOfSecondaryCapture",
    "DateOfSecondaryCapture", "ContributingEquipmentSequence[0].ContributionDateTime",
}
UID_2_25 = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


@pytest.fixture(scope="module")
def analysed():
    return decode_dicom(make_dicom(radiograph_pixels(300, 200, bits=12, seed=1)))


def flat(ds: pydicom.Dataset, prefix: str = "") -> dict[str, object]:
    """Every element by its path (``Seq[0].Keyword``), values compared as written."""
    out: dict[str, object] = {}
    for element in ds:
        key = prefix + (element.keyword or str(element.tag))
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                out.update(flat(item, f"{key}[{n}]."))
        else:
            out[key] = element.value
    return out


def test_a_second_write_is_the_same_objects_but_for_their_creation_times(analysed) -> None:
    image, metadata = analysed
    kinds = tuple(ResultKind)
    first = write_results(metadata.source, result(), kinds, image=image)
    time.sleep(1.1)  # the creation times move on; nothing else may
    second = write_results(metadata.source, result(), kinds, image=image)
    assert first.uids == second.uids
    for kind in kinds:
        a, b = (pydicom.dcmread(io.BytesIO(w.objects[kind])) for w in (first, second))
        assert a.SOPInstanceUID == first.uids[kind].instance
        assert a.SeriesInstanceUID == first.uids[kind].series
        assert UID_2_25.match(a.SOPInstanceUID) and len(a.SOPInstanceUID) <= 64
        fa, fb = flat(a), flat(b)
        differing = {key for key in fa.keys() | fb.keys() if fa.get(key) != fb.get(key)}
        assert differing and differing <= CREATION_TIMES, (kind, differing)


@pytest.mark.parametrize("change", [
    {"bundle_name": "other"}, {"checkpoints": {"m.pth": "1" * 64}}, {"threshold": 0.5},
    {"fusion_mode": "none"}, {"version": "9.9.9"},
])
def test_a_new_bundle_rule_or_version_files_new_objects(analysed, change) -> None:
    _, metadata = analysed
    before = write_results(metadata.source, result()).uids
    after = write_results(metadata.source, replace(result(), **change)).uids
    for kind, uids in before.items():
        assert after[kind].instance != uids.instance and after[kind].series != uids.series


def test_each_image_and_kind_has_its_own_uids(analysed) -> None:
    _, metadata = analysed
    other = replace(metadata.source, sop_instance_uid=metadata.source.sop_instance_uid + ".1")
    kinds = tuple(ResultKind)[:2] + (ResultKind.KOS,)
    mine = write_results(metadata.source, result(), kinds).uids
    theirs = write_results(other, result(), kinds).uids
    every = [u for w in (mine, theirs) for uids in w.values() for u in (uids.series, uids.instance)]
    assert len(set(every)) == len(every)
