"""The reading room's pieces without processes: Orthanc's configuration, the viewer app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from spine.readingroom.orthanc import OrthancPlan, ReadingRoomConfigError, parse_users
from spine.readingroom.viewer import create_app, without_linear_voi_function

STRONG = "k3y-long-and-random-enough-2026"


def test_beyond_loopback_needs_users_with_real_passwords(tmp_path: Path) -> None:
    OrthancPlan(tmp_path, "127.0.0.1").check()  # loopback: no users needed
    with pytest.raises(ReadingRoomConfigError, match="READING_ROOM_USERS"):
        OrthancPlan(tmp_path, "0.0.0.0").check()
    for weak in ("reader:changeme", "reader:short", "reader", ":x"):
        with pytest.raises(ReadingRoomConfigError):
            parse_users(weak)
    users = parse_users(f"reader:{STRONG}")
    plan = OrthancPlan(tmp_path, "0.0.0.0", users=users)
    plan.check()
    config = json.loads(plan.write().read_text())
    assert config["AuthenticationEnabled"] and config["RemoteAccessAllowed"]
    assert config["RegisteredUsers"] == {"reader": STRONG}
    assert (plan.write().stat().st_mode & 0o777) == 0o600


def test_loopback_orthanc_keeps_its_data_and_routes_images_to_the_listener(
    tmp_path: Path,
) -> None:
    plan = OrthancPlan(tmp_path / "room", "127.0.0.1", listener_port=11199)
    config = json.loads(plan.write().read_text())
    assert not config["RemoteAccessAllowed"] and not config["AuthenticationEnabled"]
    assert config["StorageDirectory"] == str(tmp_path / "room" / "orthanc")
    assert not config["DicomAlwaysAllowStore"] and config["DicomCheckModalityHost"]
    assert config["DicomModalities"]["SPINE"] == ["SPINE", "127.0.0.1", 11199]
    lua = (tmp_path / "room" / "autoroute.lua").read_text()
    assert "SendToModality(instanceId, 'SPINE')" in lua and "RemoteAet'] == 'SPINE'" in lua


def test_the_children_are_wired_to_this_orthanc_and_link_to_this_viewer(
    tmp_path: Path,
) -> None:
    from spine.readingroom.command import room_env

    plan = OrthancPlan(tmp_path, "127.0.0.1", dicom_port=4299)
    env = room_env({"RESULTS_STORE_AE": "PACS@10.0.0.1:104", "X": "1"}, plan, "http://h:3000")
    assert env["RESULTS_STORE_AE"] == "ORTHANC@127.0.0.1:4299"
    assert env["LISTENER_ALLOWED_AE_TITLES"] == "ORTHANC" and env["X"] == "1"
    assert env["VIEWER_URL"] == "http://h:3000"  # the web page's "Open in viewer"
    assert room_env({"VIEWER_URL": "https://mine"}, plan, "http://h:3000")["VIEWER_URL"] == (
        "https://mine"
    )


def test_only_a_top_level_linear_voi_function_is_dropped() -> None:
    linear = {"00281056": {"vr": "CS", "Value": ["LINEAR"]}, "00281050": {"vr": "DS"}}
    sigmoid = {"00281056": {"vr": "CS", "Value": ["SIGMOID"]}}
    cleaned = without_linear_voi_function([linear, sigmoid, "not a dataset"])
    assert cleaned == [{"00281050": {"vr": "DS"}}, sigmoid, "not a dataset"]
    assert without_linear_voi_function({"not": "a list"}) == {"not": "a list"}


def test_the_viewer_serves_ohif_deep_links_and_its_own_config(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html>OHIF</html>")
    (tmp_path / "app.bundle.js").write_text("bundle")
    client = TestClient(create_app(tmp_path, "http://127.0.0.1:9"))
    assert client.get("/viewer?StudyInstanceUIDs=1.2.3").text == "<html>OHIF</html>"
    assert client.get("/app.bundle.js").text == "bundle"
    assert client.get("/missing.js").status_code == 404
    for escape in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc/passwd"):
        assert "root:" not in client.get(escape).text  # never a file outside dist/
    config = client.get("/app-config.js").text
    assert "wadoRoot: '/dicom-web'" in config and "qidoRoot: '/dicom-web'" in config
    with pytest.raises(FileNotFoundError, match="setup-reading-room"):
        create_app(tmp_path / "nothing", "http://127.0.0.1:9")


def test_viewer_link_needs_viewer_url_and_a_checked_study_uid() -> None:
    from gateway.pipeline.response import viewer_link
    from shared.dicom.source import SourceImage
    from shared.settings import GatewaySettings

    source = SourceImage("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "1.2.3", "1.2.3.9", 8, 8,
                         "MONOCHROME2")
    assert viewer_link("http://127.0.0.1:3000/", source) == (
        "http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3.9"
    )
    assert viewer_link(None, source) is None
    assert viewer_link("http://v", None) is None
    with pytest.raises(ValueError, match="VIEWER_URL"):
        GatewaySettings(viewer_url="javascript:alert(1)")
