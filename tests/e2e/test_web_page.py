"""The web page in a real browser (Debian's Chromium, headless) against the real stack.

Screenshots land in test-artifacts/e2e/. ``UPDATE_DOCS_SCREENSHOT=1`` also rewrites
docs/screenshot.png, the README's picture (otherwise that test is skipped).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.e2e.conftest import REPO
from tests.factories import make_dicom, radiograph_pixels

pytestmark = pytest.mark.timeout(300)

# The Content-Security-Policy the page is built to run under (no inline code or styles
# attributes, images only from the page and data: URIs).
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = "<img src=x onerror=window.__xss=1>"
BOX_CLASS = "Disc space narrowing"  # the test detector fires only this class
RESOURCE_ERROR = "Failed to load resource"  # Chromium logs every 4xx/5xx response
API_KEY = "e2e-secret-key"


def phantom_pixels() -> np.ndarray:
    """A lateral spine phantom (the project's own generator: no silent fallback)."""
    from training.phantoms import render_phantom

    pixels, _ = render_phantom(np.random.default_rng(3), abnormal=True, view="lateral")
    return pixels


@pytest.fixture(scope="module")
def spine_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "lateral-spine.dcm"
    path.write_bytes(make_dicom(phantom_pixels(), patient_id="E2E-0001"))
    return path


@pytest.fixture(scope="module")
def api_result(stack: Any, spine_dicom: Path) -> dict[str, Any]:
    """What the API itself says about the file: the page must show the same."""
    response = httpx.post(
        f"{stack.gateway}/upload",
        params={"annotate": "false", "canonical_image": "true"},
        files={"file": (spine_dicom.name, spine_dicom.read_bytes(), "application/dicom")},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def gateway_with(tmp: Path, **env: str) -> Iterator[str]:
    """One more real gateway with these settings (its URL), stopped afterwards."""
    from tests.integration.stack import base_env, start_service, wait_ready

    service = start_service("gateway", base_env(tmp, **env), tmp)
    try:
        wait_ready(service, timeout_s=60)
        yield service.url
    finally:
        service.stop()


@pytest.fixture(scope="module")
def passthrough_gateway(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second gateway on the same model services that returns the raw PatientID."""
    tmp = tmp_path_factory.mktemp("phi-gateway")
    with gateway_with(
        tmp, PHI_MODE="passthrough", CLASSIFIER_URLS=stack.classifier, DETECTOR_URLS=stack.detector
    ) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_gateway(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway that requires API_KEY (configured, as in production, by its sha256)."""
    tmp = tmp_path_factory.mktemp("keyed-gateway")
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    with gateway_with(
        tmp,
        API_KEYS_SHA256=f"e2e:{digest}",
        CLASSIFIER_URLS=stack.classifier,
        DETECTOR_URLS=stack.detector,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def untrained_slow_detector_gateway(
    stack: Any, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A classifier on an ``untrained`` bundle and a gateway whose detector deadline (1 ms)
    the real detector cannot meet: every answer is untrained and classification only."""
    from tests.integration.stack import base_env, start_service, wait_ready

    tmp = tmp_path_factory.mktemp("untrained-gateway")
    bundle = shutil.copytree(tiny_bundle, tmp / "bundle")
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest.update(name="tiny-untrained-bundle", kind="untrained")
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    classifier = start_service("classifier", base_env(tmp, MODEL_DIR=str(bundle)), tmp)
    try:
        wait_ready(classifier)
        with gateway_with(
            tmp,
            CLASSIFIER_URLS=classifier.url,
            DETECTOR_URLS=stack.detector,
            DETECTOR_TIMEOUT_S="0.001",
        ) as url:
            yield url
    finally:
        classifier.stop()


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("html[data-ready]")
    page.wait_for_selector("#health[data-loaded]")


def wait_settled(page: Any, count: int = 1) -> None:
    """Until ``count`` cards have finished (result or error)."""
    page.wait_for_function(
        "n => document.querySelectorAll('.card[data-state=done], .card[data-state=error]').length >= n",
        arg=count,
        timeout=60_000,
    )


def visible_boxes(page: Any) -> int:
    return page.locator(".viewer__overlay .det:not(.is-hidden)").count()


def assert_no_injection(page: Any) -> None:
    """Nothing the server or a file name said became markup, and no handler ran."""
    assert page.evaluate("typeof window.__xss") == "undefined"
    injected = page.evaluate(
        """() => ({
            scripts: [...document.querySelectorAll('script')].filter(s => s.type !== 'module').length,
            moduleScripts: document.querySelectorAll('script').length,
            badImages: [...document.querySelectorAll('img')]
                .filter(i => !i.getAttribute('src').startsWith('data:image/')).length,
            handlers: [...document.querySelectorAll('*')]
                .filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
            iframes: document.querySelectorAll('iframe, object, embed').length,
        })"""
    )
    assert injected == {
        "scripts": 0,
        "moduleScripts": 1,
        "badImages": 0,
        "handlers": 0,
        "iframes": 0,
    }, injected


# --------------------------------------------------------------------------- tests


def test_result_shows_diagnosis_members_and_filterable_boxes(
    stack: Any, page: Any, spine_dicom: Path, api_result: dict[str, Any], artifacts: Path
) -> None:
    open_page(page, stack.gateway)
    assert page.locator("#health").get_attribute("data-state") == "healthy"
    page.screenshot(path=str(artifacts / "01-empty.png"))

    page.set_input_files("#file-input", str(spine_dicom))
    card = page.locator(".card").first
    # progress, then the result
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    assert card.locator("[data-testid=status]").inner_text().startswith("Analysed")
    assert card.locator(".card__progress").is_hidden()

    # diagnosis, with probability and threshold, as the API said
    assert card.locator("[data-testid=diagnosis]").inner_text() == api_result["diagnosis"]
    numbers = card.locator(".verdict__numbers").inner_text()
    assert f"{api_result['abnormal_probability']:.3f}" in numbers
    assert f"{api_result['threshold']:.3f}" in numbers

    # one labelled bar per ensemble member
    members = card.locator(".member")
    assert members.count() == 3
    assert sorted(members.evaluate_all("els => els.map(e => e.dataset.member)")) == sorted(
        api_result["ensemble_prediction"]
    )
    for name, probability in api_result["ensemble_prediction"].items():
        bar = card.locator(f".member[data-member='{name}'] [role=meter]")
        assert float(bar.get_attribute("aria-valuenow")) == pytest.approx(probability)
        assert name in bar.evaluate(
            "e => document.getElementById(e.getAttribute('aria-labelledby')).textContent"
        )

    # the canonical image with one SVG box per detection, mapped to canonical pixels
    detections = api_result["detections"]
    assert detections, "the test detector always fires"
    assert (
        card.locator(".viewer__image").evaluate("i => i.complete && i.naturalWidth")
        == (api_result["image"]["canonical_width"])
    )
    boxes = card.locator(".viewer__overlay .det")
    assert boxes.count() == len(detections)
    x = float(boxes.first.locator("rect").get_attribute("x"))
    assert x == pytest.approx(detections[0]["bbox"][0] * api_result["image"]["scale_x"], abs=0.01)
    assert visible_boxes(page) == len(detections)
    assert page.locator(".viewer__overlay .det:visible").count() > 0
    total = len(detections)
    assert card.locator(".detections__count").inner_text() == f"{total} of {total} boxes shown"

    # label and confidence on focus (and hover)
    drawn = card.locator(".viewer__overlay .det:visible").first
    drawn.focus()
    tooltip = card.locator(".viewer__tooltip")
    assert tooltip.is_visible()
    assert BOX_CLASS in tooltip.inner_text()
    assert re.search(r"\d+\.\d%", tooltip.inner_text())
    page.screenshot(path=str(artifacts / "02-result-tooltip.png"))

    # confidence slider, operated by keyboard: max hides every box, min shows them again
    slider = card.get_by_label("Minimum confidence")
    slider.focus()
    page.keyboard.press("End")
    assert slider.input_value() == "1"
    assert visible_boxes(page) == 0
    assert page.locator(".viewer__overlay .det:visible").count() == 0
    assert card.locator(".detections__count").inner_text() == f"0 of {total} boxes shown"
    page.keyboard.press("Home")
    assert visible_boxes(page) == total
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "0.01"
    assert card.locator(".slider__value").inner_text() == "0.01"

    # a class toggle hides that class's boxes
    toggle = card.get_by_role("checkbox", name=re.compile(BOX_CLASS))
    assert toggle.is_checked()
    toggle.uncheck()
    assert visible_boxes(page) == 0
    toggle.check()
    assert visible_boxes(page) == total

    # zoom: buttons, keyboard, full view
    viewer = card.locator(".viewer")
    assert float(viewer.get_attribute("data-zoom")) == pytest.approx(1)
    card.get_by_role("button", name="Zoom in").click()
    card.get_by_role("button", name="Zoom in").click()
    assert float(viewer.get_attribute("data-zoom")) == pytest.approx(1.5625, rel=1e-3)
    viewport = card.locator(".viewer__viewport")
    viewport.focus()
    page.keyboard.press("0")
    assert float(viewer.get_attribute("data-zoom")) == pytest.approx(1)
    viewport.hover()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_function("() => Number(document.querySelector('.viewer').dataset.zoom) > 1.2")
    card.get_by_role("button", name="Open full view").click()
    assert "viewer--expanded" in (viewer.get_attribute("class") or "")
    page.screenshot(path=str(artifacts / "03-full-view.png"))
    page.keyboard.press("Escape")
    assert "viewer--expanded" not in (viewer.get_attribute("class") or "")
    viewport.focus()
    page.keyboard.press("0")

    # metadata as returned, the bundle in use, the disclaimer
    metadata = card.locator(".kv__row[data-key=patient_id] dd").inner_text()
    assert metadata == api_result["metadata"]["patient_id"]
    assert metadata != "E2E-0001"  # pseudonymised by default
    assert card.locator(".kv__row[data-key=modality] dd").inner_text() == "DX"
    assert api_result["model_bundle"]["name"] in card.locator(".panel-box").last.inner_text()
    assert page.get_by_role("heading", name="Medical Disclaimer").is_visible()
    assert "FOR RESEARCH AND EDUCATIONAL PURPOSES ONLY" in page.locator("#disclaimer").inner_text()
    assert page.locator("[data-testid=demo-banner]").count() == 0  # the test bundle is "user"

    # the picture: nothing focused, all boxes, one box's label showing
    slider.evaluate("s => { s.value = '0'; s.dispatchEvent(new Event('input')); }")
    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "05-result-full-page.png"), full_page=True)
    card.locator(".viewer__overlay .det:visible").nth(6).hover(force=True)
    assert tooltip.is_visible()
    page.screenshot(path=str(artifacts / "04-result.png"))
    bottom = card.locator(".result__grid").evaluate(
        "e => e.getBoundingClientRect().bottom + scrollY"
    )
    clip = {"x": 0, "y": 0, "width": 1440, "height": int(bottom) + 20}
    page.screenshot(path=str(artifacts / "04-result-clip.png"), clip=clip, full_page=True)
    assert_no_injection(page)
    assert page.errors.unexpected() == []


def test_download_dicom_sr_saves_the_structured_report(
    stack: Any, page: Any, spine_dicom: Path, api_result: dict[str, Any]
) -> None:
    import pydicom

    open_page(page, stack.gateway)
    page.set_input_files("#file-input", str(spine_dicom))
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    button = page.locator(".card").first.get_by_role("button", name="Download DICOM SR")
    with page.expect_download() as download:
        button.click()
    assert download.value.suggested_filename.endswith("-sr.dcm")
    sr = pydicom.dcmread(download.value.path())
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED"
    source = pydicom.dcmread(spine_dicom)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert not page.errors.unexpected()


@pytest.mark.parametrize(
    ("viewer_url", "href"),
    [
        ("http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3", "http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3"),
        ("javascript:alert(1)", None),
        (None, None),
    ],
)
def test_open_in_viewer_only_for_an_http_viewer_url(
    stack: Any, page: Any, spine_dicom: Path, api_result: dict[str, Any],
    viewer_url: str | None, href: str | None,
) -> None:
    """VIEWER_URL's link (the gateway's ``viewer_url``) becomes "Open in viewer"."""
    body = {**api_result, "viewer_url": viewer_url}
    page.route("**/upload?*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(body)
    ))
    open_page(page, stack.gateway)
    page.set_input_files("#file-input", str(spine_dicom))
    wait_settled(page)
    link = page.locator(".card").first.get_by_role("link", name="Open in viewer")
    if href is None:
        assert link.count() == 0
    else:
        assert link.get_attribute("href") == href
        assert link.get_attribute("target") == "_blank"
        assert "noopener" in (link.get_attribute("rel") or "")
    assert page.errors.unexpected() == []


def test_each_file_shows_upload_progress_then_analysing(
    stack: Any, page: Any, spine_dicom: Path, tmp_path: Path, artifacts: Path
) -> None:
    """Several files at once, each with its own card; uploads throttled so progress is seen."""
    not_dicom = tmp_path / "second.dcm"
    not_dicom.write_bytes(b"\0" * 4096)
    open_page(page, stack.gateway)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": 4 * 1024 * 1024,  # bytes/s: the 5 MB file takes about a second
        },
    )
    page.evaluate(
        """() => {
            window.__states = {};
            new MutationObserver(() => {
                for (const card of document.querySelectorAll('.card')) {
                    const name = card.querySelector('.card__title').textContent;
                    const seen = window.__states[name] ||= [];
                    const now = card.dataset.state + ' ' + card.querySelector('.card__status').textContent;
                    if (seen[seen.length - 1] !== now) seen.push(now);
                }
            }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
        }"""
    )
    page.set_input_files("#file-input", [str(spine_dicom), str(not_dicom)])
    assert page.locator(".card").count() == 2
    page.wait_for_function(
        "() => /Uploading [1-9]/.test(document.querySelector('.card:last-child .card__status').textContent)"
    )
    page.screenshot(path=str(artifacts / "10-uploading.png"))
    wait_settled(page, 2)
    states = page.evaluate("window.__states")
    spine = states[spine_dicom.name]
    uploading = [s for s in spine if s.startswith("uploading Uploading ")]
    percents = [int(s.rsplit(" ", 1)[1].rstrip("%")) for s in uploading]
    assert any(0 < p < 100 for p in percents), spine
    assert percents == sorted(percents), spine
    assert spine.index("analysing Analysing…") > spine.index(uploading[-1]), spine
    assert spine[-1].startswith("done Analysed"), spine
    assert states[not_dicom.name][-1] == "error Failed"
    second = page.locator(".card", has_text=not_dicom.name)
    assert second.get_by_role("button", name="Retry").is_visible()
    assert page.errors.unexpected(allow=(RESOURCE_ERROR,)) == []


def test_non_dicom_shows_the_api_error_with_retry(
    stack: Any, page: Any, tmp_path: Path, artifacts: Path
) -> None:
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("Patient notes, not an image.\n" * 20)
    expected = httpx.post(
        f"{stack.gateway}/upload",
        files={"file": (not_dicom.name, not_dicom.read_bytes())},
        timeout=60,
    )
    assert expected.status_code == 400
    message = expected.json()["message"]

    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/upload" in r.url else None)
    open_page(page, stack.gateway)
    page.set_input_files("#file-input", str(not_dicom))
    page.wait_for_selector(".card[data-state=error]")
    card = page.locator(".card").first
    assert card.locator("[data-testid=error-message]").inner_text() == message
    assert "HTTP 400" in card.locator(".error__details").inner_text()
    assert card.get_by_role("alert").is_visible()
    retry = card.get_by_role("button", name="Retry")
    assert retry.is_visible()
    page.screenshot(path=str(artifacts / "06-error.png"))

    retry.click()
    page.wait_for_function("() => document.querySelector('.card').dataset.state === 'error'")
    assert len(uploads) == 2
    assert card.locator("[data-testid=error-message]").inner_text() == message
    assert page.evaluate("document.activeElement.textContent") == "Retry"  # focus kept

    # the same file dropped on the page (a synthetic drag and drop of a File)
    page.evaluate(
        """text => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], 'dropped.dcm', {type: 'application/dicom'}));
            const zone = document.getElementById('dropzone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                        dataTransfer: transfer}));
            }
        }""",
        not_dicom.read_text(),
    )
    wait_settled(page, 2)
    dropped = page.locator(".card", has_text="dropped.dcm")
    assert dropped.locator("[data-testid=error-message]").inner_text() == message
    assert len(uploads) == 3
    assert "is-dragover" not in (page.locator("#dropzone").get_attribute("class") or "")
    assert page.errors.unexpected(allow=(RESOURCE_ERROR,)) == []


def test_patient_name_and_id_with_markup_stay_text(
    passthrough_gateway: str, page: Any, tmp_path: Path, artifacts: Path
) -> None:
    dicom = tmp_path / f"{XSS_IMG}.dcm"  # the file name is shown too
    dicom.write_bytes(
        make_dicom(radiograph_pixels(512, 384, seed=9), patient_name=XSS_SCRIPT, patient_id=XSS_IMG)
    )
    open_page(page, passthrough_gateway)
    page.set_input_files("#file-input", str(dicom))
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    card = page.locator(".card").first
    assert card.locator(".kv__row[data-key=patient_id] dd").inner_text() == XSS_IMG
    assert card.locator(".card__title").inner_text() == f"{XSS_IMG}.dcm"
    page.screenshot(path=str(artifacts / "07-phi-passthrough-markup.png"))
    assert_no_injection(page)
    assert page.errors.unexpected() == []


def test_every_server_string_is_inserted_as_text(
    stack: Any, page: Any, spine_dicom: Path, api_result: dict[str, Any], artifacts: Path
) -> None:
    """The API's own strings (warnings, class and member names, bundle, metadata, errors)."""
    evil = copy.deepcopy(api_result)
    evil["demo"] = True
    evil["model_bundle"].update(
        name=f"bundle{XSS_IMG}", kind="demo", checkpoints={f"ckpt{XSS_SCRIPT}.pth": XSS_IMG}
    )
    evil["warnings"] = [f"warning {XSS_IMG}", f"warning {XSS_SCRIPT}"]
    evil["ensemble_prediction"] = {f"m{XSS_IMG}": 0.7, "resnet50": 0.2, "efficientnetv2": 0.9}
    evil["ensemble_weights"] = {f"m{XSS_IMG}": 0.42, "resnet50": 0.26, "efficientnetv2": 0.32}
    for detection in evil["detections"]:
        detection["class"] = f"cls{XSS_IMG}"
    evil["metadata"].update(
        modality=XSS_IMG,
        photometric_interpretation=XSS_SCRIPT,
        transfer_syntax=XSS_IMG,
        study_date=XSS_SCRIPT,
    )
    evil["request_id"] = XSS_IMG
    health = httpx.get(f"{stack.gateway}/health", timeout=30).json()
    health.update(demo=True, warnings=[f"health {XSS_IMG}"])

    mode = {"upload": "result"}

    def fulfil_upload(route: Any) -> None:
        if mode["upload"] == "result":
            route.fulfill(status=200, content_type="application/json", body=json.dumps(evil))
        else:
            route.fulfill(
                status=422,
                content_type="application/json",
                body=json.dumps(
                    {
                        "status": "error",
                        "message": f"cannot analyse {XSS_IMG}",
                        "request_id": XSS_SCRIPT,
                    }
                ),
            )

    page.route(
        "**/health",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(health)
        ),
    )
    page.route("**/upload?*", fulfil_upload)

    def with_csp(route: Any) -> None:  # the page, served under a strict CSP
        response = route.fetch()
        headers = {**response.headers, "content-security-policy": STRICT_CSP}
        route.fulfill(response=response, headers=headers)

    page.route(f"{stack.gateway}/", with_csp)
    open_page(page, stack.gateway)

    # the CSP is in force: an inline script is refused (and logged once)
    page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__inline = 1'; document.body.append(s); s.remove(); }"""
    )
    assert page.evaluate("typeof window.__inline") == "undefined"
    # /health's warnings and the demo banner at load
    health_warning = page.locator("[data-testid=health-warning]")
    assert health_warning.inner_text() == f"health {XSS_IMG}"
    assert page.locator("[data-testid=health-demo]").is_visible()

    page.set_input_files("#file-input", str(spine_dicom))
    page.wait_for_selector(".card[data-state=done]")
    card = page.locator(".card").first
    assert card.locator("[data-testid=demo-banner]").is_visible()
    assert f"bundle{XSS_IMG}" in card.locator("[data-testid=demo-banner]").inner_text()
    assert card.locator(".warnings li").all_inner_texts() == evil["warnings"]
    assert card.locator(".member .member__name").first.inner_text().startswith(f"m{XSS_IMG}")
    assert card.get_by_role("checkbox", name=re.compile(re.escape(f"cls{XSS_IMG}"))).is_checked()
    assert card.locator(".kv__row[data-key=modality] dd").inner_text() == XSS_IMG
    assert card.locator(".kv__row[data-key=study_date] dd").inner_text() == XSS_SCRIPT
    assert XSS_IMG in card.locator(".panel-box").last.inner_text()
    card.locator(".viewer__overlay .det:visible").first.focus()
    assert f"cls{XSS_IMG}" in card.locator(".viewer__tooltip").inner_text()
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "08-demo-banner-and-markup.png"))
    assert_no_injection(page)

    mode["upload"] = "error"
    page.set_input_files("#file-input", str(spine_dicom))
    wait_settled(page, 2)
    error = page.locator(".card").first.locator("[data-testid=error-message]")
    assert error.inner_text() == f"cannot analyse {XSS_IMG}"
    assert XSS_SCRIPT in page.locator(".card").first.locator(".error__details").inner_text()
    assert_no_injection(page)
    # no CSP violation but the probe's: the page needs no inline code or style attributes
    violations = [m for m in page.errors.console if "Content Security Policy" in m]
    assert len(violations) == 1 and "inline script" in violations[0], violations
    assert page.errors.unexpected(allow=(RESOURCE_ERROR, "Content Security Policy")) == []


def test_keyboard_reaches_the_file_chooser(
    stack: Any, page: Any, spine_dicom: Path, artifacts: Path
) -> None:
    # Listening before the page loads turns Playwright's file-chooser interception on
    # early; enabled only inside expect_file_chooser it races the key press.
    page.on("filechooser", lambda chooser: None)
    open_page(page, stack.gateway)
    for _ in range(8):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    else:
        pytest.fail("Tab never reached the file chooser")
    dropzone = page.get_by_role("button", name=re.compile("Drop DICOM files here, or choose files"))
    assert dropzone.get_attribute("id") == "dropzone"
    assert dropzone.evaluate("e => e.matches(':focus-visible')")
    assert dropzone.evaluate("e => getComputedStyle(e).outlineStyle") != "none"
    page.screenshot(path=str(artifacts / "09-keyboard-focus.png"))

    with page.expect_file_chooser() as chooser_info:
        page.keyboard.press("Enter")
    assert chooser_info.value.is_multiple()
    chooser_info.value.set_files(str(spine_dicom))
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    page.locator("#dropzone").focus()
    with page.expect_file_chooser() as chooser_info:
        page.keyboard.press("Space")
    chooser_info.value.set_files(str(spine_dicom))
    wait_settled(page, 2)

    # the result's controls are reachable and labelled
    card = page.locator(".card").first
    for name in ("Zoom in", "Zoom out", "Fit image to view", "Open full view"):
        assert card.get_by_role("button", name=name, exact=True).count() == 1
    assert card.get_by_role("slider", name="Minimum confidence").count() == 1
    assert page.errors.unexpected() == []


def test_try_a_sample_analyses_a_synthetic_phantom_from_the_gateway(
    stack: Any, page: Any, artifacts: Path
) -> None:
    """No DICOM at hand: one click loads a sample from the gateway and analyses it."""
    open_page(page, stack.gateway)
    samples = page.locator("[data-testid=samples]")
    samples.wait_for(state="visible")
    assert "synthetic" in samples.inner_text().lower()
    assert "not patient images" in samples.inner_text()
    buttons = page.locator("[data-testid=try-sample]")
    assert buttons.count() == 4
    choice = page.get_by_role("button", name="Try the synthetic abnormal sample abnormal-1")
    choice.click()
    page.wait_for_selector(".card[data-state=done]", timeout=120_000)
    card = page.locator(".card").first
    assert card.locator(".card__title").inner_text() == "synthetic-abnormal-1.dcm"
    assert card.locator("[data-testid=diagnosis]").inner_text() in ("Normal", "Abnormal")
    assert card.locator(".viewer__image").is_visible()
    page.screenshot(path=str(artifacts / "12-try-a-sample.png"))
    assert page.errors.unexpected() == []


def test_classification_only_result_from_an_untrained_bundle(
    untrained_slow_detector_gateway: str, page: Any, spine_dicom: Path, artifacts: Path
) -> None:
    """Detector too slow (detections null) and untrained weights: both said plainly.

    The answer comes from a real gateway: its classifier serves an ``untrained`` bundle
    and its detector deadline is shorter than the real detector needs.
    """
    open_page(page, untrained_slow_detector_gateway)
    with page.expect_response("**/upload?*") as answer:
        page.set_input_files("#file-input", str(spine_dicom))
    assert answer.value.status == 200
    body = answer.value.json()
    assert body["detections"] is None
    assert body["model_bundle"]["kind"] == "untrained" and body["demo"] is True
    assert any(w.startswith("UNTRAINED model bundle") for w in body["warnings"])
    assert any(
        "Detection unavailable (" in w and "classification only" in w for w in body["warnings"]
    ), body["warnings"]
    page.wait_for_selector(".card[data-state=done]")
    card = page.locator(".card").first
    assert card.locator("[data-testid=diagnosis]").inner_text() == body["diagnosis"]
    assert "Untrained" in card.locator("[data-testid=demo-banner]").inner_text()
    assert "detector was unavailable" in card.locator(".detections").inner_text()
    assert card.locator(".viewer__overlay .det").count() == 0
    assert card.locator(".viewer__image").is_visible()
    assert card.locator(".warnings li").all_inner_texts() == body["warnings"]
    page.evaluate("window.scrollTo(0, 300)")
    page.screenshot(path=str(artifacts / "11-classification-only-untrained.png"))
    assert page.errors.unexpected() == []


@pytest.mark.skipif(
    not os.environ.get("UPDATE_DOCS_SCREENSHOT"), reason="set UPDATE_DOCS_SCREENSHOT=1"
)
def test_docs_screenshot(stack: Any, page: Any, spine_dicom: Path) -> None:
    """docs/screenshot.png: the real result, labelled as what it is (random test weights).

    The test bundle's manifest calls itself "user"; its weights are random, so the picture
    marks it untrained, as the gateway does for an untrained bundle.
    """

    def label_untrained(route: Any) -> None:
        # Chromium does not hand an XHR's File body to route.fetch(): post it from here
        response = httpx.post(
            route.request.url,
            files={"file": (spine_dicom.name, spine_dicom.read_bytes(), "application/dicom")},
            timeout=120,
        )
        body = response.json()
        assert response.status_code == 200, body
        body["model_bundle"]["kind"] = "untrained"
        body["demo"] = body["model_bundle"]["demo"] = True
        body["warnings"].insert(
            0, "UNTRAINED model bundle (random weights): these results are meaningless."
        )
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/upload?*", label_untrained)
    open_page(page, stack.gateway)
    page.set_input_files("#file-input", str(spine_dicom))
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    card = page.locator(".card").first
    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    card.locator(".viewer__overlay .det:visible").nth(6).hover(force=True)
    bottom = card.locator(".result__grid").evaluate(
        "e => e.getBoundingClientRect().bottom + scrollY"
    )
    (REPO / "docs").mkdir(exist_ok=True)
    page.screenshot(
        path=str(REPO / "docs" / "screenshot.png"),
        clip={"x": 0, "y": 0, "width": 1440, "height": int(bottom) + 20},
        full_page=True,
    )


def test_api_key_is_asked_for_on_401_and_sent_on_retry(
    keyed_gateway: str, page: Any, spine_dicom: Path, artifacts: Path
) -> None:
    """A gateway with API keys answers 401 until the page sends the key the user typed."""
    seen: list[tuple[str | None, int]] = []  # (key sent, gateway's status) per upload

    def note_upload(request: Any) -> None:
        if "/upload?" in request.url:
            seen.append((request.header_value("x-api-key"), request.response().status))

    page.on("requestfinished", note_upload)
    open_page(page, keyed_gateway)
    page.set_input_files("#file-input", str(spine_dicom))
    page.wait_for_selector(".card[data-state=error]")
    card = page.locator(".card").first
    assert "API key" in card.locator("[data-testid=error-message]").inner_text()
    field = card.get_by_label("API key")
    field.fill(API_KEY)
    page.screenshot(path=str(artifacts / "12-api-key.png"))
    field.press("Enter")
    page.wait_for_selector(".card[data-state=done]", timeout=60_000)
    assert seen == [(None, 401), (API_KEY, 200)]
    assert page.evaluate("sessionStorage.length") == 1
    assert page.errors.unexpected(allow=(RESOURCE_ERROR,)) == []
