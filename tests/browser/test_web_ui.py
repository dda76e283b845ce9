"""The web UI in Debian's chromium (Playwright) against a real mesh: etcd, auth, OCR and the BFF.

Screenshots go to a temporary folder; with OCRMESH_UPDATE_SCREENSHOTS=1 they replace the committed
ones in web_bff/screenshots/.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import chromium
from tests.corpus import CORPUS
from tests.integration.bff_fixtures import Mesh, running_mesh
from tests.pdf_samples import scan_pdf

if not chromium.available():
    pytest.skip(chromium.MISSING, allow_module_level=True)

from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
TRUNCATED = CORPUS / "bad" / "truncated.jpg"
EXPECTED = ("正品促销", "强力去污", "假一赔十")
PASSWORD = "correct horse 42"
OCR_ID = "ocr-ui"
RESULT_TIMEOUT_MS = 90_000
SHOTS = Path(__file__).resolve().parents[2] / "web_bff" / "screenshots"
MAX_SHOT_BYTES = 200 * 1024
DESKTOP: ViewportSize = {"width": 1200, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("bff-ui"), ("--instance-id", OCR_ID)) as started:
        yield started


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium.CHROMIUM, args=chromium.ARGS)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return SHOTS if os.environ.get("OCRMESH_UPDATE_SCREENSHOTS") == "1" else tmp_path_factory.mktemp("shots")


def screenshot(page: Page, folder: Path, name: str) -> None:
    page.wait_for_timeout(250)  # let transitions settle
    size = chromium.save_small_png(page.screenshot(), folder / f"{name}.png")
    assert size < MAX_SHOT_BYTES, f"{name}.png is {size} bytes"


def new_page(browser: Browser, mesh: Mesh, locale: str = "en-US", viewport: ViewportSize = DESKTOP) -> Page:
    context: BrowserContext = browser.new_context(locale=locale, viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=mesh.url.rstrip("/"))
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(mesh.url)
    page.wait_for_selector("body[data-ready='1']")
    return page


def new_user() -> str:
    return f"ui-{uuid.uuid4().hex[:8]}"


def register(page: Page, mesh: Mesh, user: str) -> None:
    page.goto(mesh.url + "#/register")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#auth-notice")).to_contain_text(user)
    expect(page.locator("#tab-login")).to_have_class(re.compile("active"))


def log_in(page: Page, user: str) -> None:
    expect(page.locator("#view-login")).to_be_visible()
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.get_by_test_id("username")).to_have_text(user)


def signed_in(browser: Browser, mesh: Mesh, **kwargs: object) -> Page:
    page = new_page(browser, mesh, **kwargs)  # type: ignore[arg-type]
    user = new_user()
    register(page, mesh, user)
    log_in(page, user)
    return page


def drop_file(page: Page, path: Path, mime: str = "image/jpeg") -> None:
    """Drag and drop a file onto the drop zone, as a DataTransfer built in the page."""
    data = list(path.read_bytes())
    page.evaluate(
        """([bytes, name, mime]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            const zone = document.getElementById("dropzone");
            const init = {dataTransfer: dt, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
        [data, path.name, mime],
    )


def paste_file(page: Page, path: Path, mime: str = "image/jpeg") -> None:
    data = list(path.read_bytes())
    page.evaluate(
        """([bytes, name, mime]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            const init = {clipboardData: dt, bubbles: true, cancelable: true};
            document.dispatchEvent(new ClipboardEvent("paste", init));
        }""",
        [data, path.name, mime],
    )


def expect_result(page: Page) -> None:
    expect(page.get_by_test_id("result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    lines = page.get_by_test_id("lines")
    for word in EXPECTED:
        expect(lines).to_contain_text(word)


def test_register_login_upload_copy_and_upload_again(browser: Browser, mesh: Mesh, shots: Path) -> None:
    page = new_page(browser, mesh)
    screenshot(page, shots, "home-desktop")
    page.goto(mesh.url + "#/register")
    # Inline validation before anything is sent.
    page.fill("#username", "ab")
    page.fill("#password", "short")
    page.fill("#confirm", "other")
    page.click("#auth-submit")
    expect(page.locator("#username-error")).to_have_text("At least 3 characters.")
    expect(page.locator("#password-error")).to_have_text("At least 8 characters.")
    expect(page.locator("#confirm-error")).to_have_text("The two passwords differ.")
    screenshot(page, shots, "register-validation")
    user = new_user()
    register(page, mesh, user)
    log_in(page, user)

    page.set_input_files("[data-testid=file-input]", str(PHOTO))
    expect(page.get_by_test_id("progress")).to_be_visible()  # progress while waiting
    expect_result(page)
    assert not page.get_by_test_id("progress").is_visible()
    expect(page.get_by_test_id("time")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(page.get_by_test_id("queue-wait")).to_have_text(re.compile(r"^\d+(\.\d+)? m?s$"))
    expect(page.get_by_test_id("instance")).to_have_text(OCR_ID)
    line_count = page.locator("#lines li").count()
    assert line_count >= 10
    assert page.locator("#boxes polygon").count() == line_count  # every line's box drawn over the image
    screenshot(page, shots, "result-desktop")

    page.get_by_test_id("copy").click()
    expect(page.locator("#toast")).to_have_text("Copied to the clipboard")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert all(word in copied for word in EXPECTED), copied

    page.get_by_test_id("again").click()  # clear
    expect(page.get_by_test_id("result")).to_be_hidden()
    expect(page.locator("#boxes polygon")).to_have_count(0)
    drop_file(page, PHOTO)  # upload again, by drag and drop
    expect_result(page)
    page.get_by_test_id("again").click()
    paste_file(page, PHOTO)  # and by pasting
    expect_result(page)
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_bad_file_shows_a_clear_error(browser: Browser, mesh: Mesh, shots: Path, tmp_path: Path) -> None:
    page = signed_in(browser, mesh)
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    page.set_input_files("[data-testid=file-input]", str(notes))
    error = page.get_by_test_id("error")
    expect(error).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(error).to_contain_text("This file type is not supported.")
    expect(error).to_contain_text("not an image")
    screenshot(page, shots, "error-desktop")
    page.set_input_files("[data-testid=file-input]", str(TRUNCATED))
    expect(error).to_contain_text("The image could not be read.", timeout=RESULT_TIMEOUT_MS)
    expect(page.get_by_test_id("result")).to_be_hidden()
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(11 * 1024 * 1024))
    page.set_input_files("[data-testid=file-input]", str(big))  # refused at once, before uploading
    expect(error).to_contain_text("The image is too large.")
    expect(error).to_contain_text("the limit is 10.0 MiB")
    expect(page.get_by_test_id("progress")).to_be_hidden()
    page.set_input_files("[data-testid=file-input]", str(PHOTO))  # and it recovers
    expect_result(page)
    expect(error).to_be_hidden()


def test_a_pdf_is_shown_page_by_page(browser: Browser, mesh: Mesh, tmp_path: Path) -> None:
    page = signed_in(browser, mesh)
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(scan_pdf("rapidocr_text_rec.jpg", "rapidocr_short.png"))
    page.set_input_files("[data-testid=file-input]", str(scan))
    expect(page.get_by_test_id("result")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#lines li")).to_have_count(4)
    shown = page.locator("#lines li").evaluate_all(
        "items => items.map((li) => (li.querySelector('.line-text') || li).textContent)"
    )
    assert shown == ["Page 1", "韩国小馆", "Page 2", "中国网络空间安全"]
    expect(page.locator(".preview-card")).to_be_hidden()  # no picture to draw boxes on
    assert page.locator("#boxes polygon").count() == 0
    page.get_by_test_id("again").click()
    page.set_input_files("[data-testid=file-input]", str(PHOTO))  # an image brings the preview back
    expect_result(page)
    expect(page.locator(".preview-card")).to_be_visible()
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_pdfs_pages_appear_as_they_are_read_with_progress(
    browser: Browser, mesh: Mesh, tmp_path: Path
) -> None:
    page = signed_in(browser, mesh)
    scan = tmp_path / "eight.pdf"
    scan.write_bytes(scan_pdf(*["rapidocr_en.jpg"] * 7, "rapidocr_text_rec.jpg"))
    page.set_input_files("[data-testid=file-input]", str(scan))
    # While it is read (one worker, a page at a time): how far it got, and the pages read so far.
    expect(page.get_by_test_id("progress")).to_contain_text(
        re.compile(r"Read [1-7] of 8 pages"), timeout=RESULT_TIMEOUT_MS
    )
    expect(page.locator("#lines li.page-head").first).to_have_text("Page 1")
    # Then every page, the last one's line last, and the timings.
    expect(page.locator("#lines li.page-head")).to_have_count(8, timeout=RESULT_TIMEOUT_MS)
    expect(page.get_by_test_id("time")).not_to_have_text("…", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#lines li .line-text").last).to_have_text("韩国小馆")
    expect(page.locator(".preview-card")).to_be_hidden()
    expect(page.get_by_test_id("progress")).to_be_hidden()
    assert page.errors == []  # type: ignore[attr-defined]


def test_upload_while_logged_out_goes_to_login_then_recognises(browser: Browser, mesh: Mesh) -> None:
    user = new_user()
    page = new_page(browser, mesh)
    register(page, mesh, user)
    page.goto(mesh.url + "#/ocr")
    expect(page.locator("#drop-login")).to_be_visible()
    page.set_input_files("[data-testid=file-input]", str(PHOTO))
    expect(page).to_have_url(re.compile(r"#/login$"))
    expect(page.locator("#auth-notice")).to_contain_text("Log in first")
    log_in(page, user)
    expect(page).to_have_url(re.compile(r"#/ocr$"))
    expect_result(page)  # the image chosen before logging in


def test_status_page_lists_the_running_instances(browser: Browser, mesh: Mesh, shots: Path) -> None:
    page = new_page(browser, mesh)
    page.goto(mesh.url + "#/status")
    expect(page).to_have_url(re.compile(r"#/login$"))  # the console needs a login
    user = "ui-admin"  # named in the test mesh's --admins: sees every instance
    register(page, mesh, user)
    log_in(page, user)
    page.goto(mesh.url + "#/status")
    expect(page.get_by_test_id("status-limited")).to_be_hidden()
    table = page.get_by_test_id("instances")
    ocr_row = table.locator(f"tr[data-instance='{OCR_ID}']")
    expect(ocr_row).to_contain_text(mesh.ocr[0].address)
    expect(ocr_row).to_contain_text("SERVING")
    auth_row = table.locator(f"tr[data-instance='{mesh.auth.instance_id}']")
    expect(auth_row).to_contain_text(mesh.auth.address)
    cards = page.get_by_test_id("services")
    expect(cards.locator("[data-service=ocr]")).to_contain_text("1 of 1 healthy")
    expect(cards.locator("[data-service=auth]")).to_contain_text("1 of 1 healthy")
    screenshot(page, shots, "status-desktop")


def test_both_languages_switch_and_are_remembered(browser: Browser, mesh: Mesh, shots: Path) -> None:
    page = signed_in(browser, mesh, locale="zh-CN")  # a Chinese browser gets the Chinese UI
    expect(page.locator("nav a[data-route=ocr]")).to_have_text("文字识别")
    expect(page.locator("#pick")).to_have_text("选择图片")
    expect(page.locator("#drop-types")).to_contain_text("最大 10 MiB")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.set_input_files("[data-testid=file-input]", str(PHOTO))
    expect_result(page)
    expect(page.locator("#copy")).to_contain_text("复制")
    screenshot(page, shots, "result-zh")

    page.get_by_test_id("lang-toggle").click()
    expect(page.locator("nav a[data-route=ocr]")).to_have_text("Recognise")
    expect(page.locator("#copy")).to_contain_text("Copy")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator("#pick")).to_have_text("Choose an image")  # remembered
    page.get_by_test_id("lang-toggle").click()
    expect(page.locator("#pick")).to_have_text("选择图片")
    page.goto(mesh.url + "#/status")
    expect(page.locator("#view-status h1")).to_have_text("服务状态")
    expect(page.get_by_test_id("services").locator("[data-service=ocr]")).to_contain_text("1 个健康")
    screenshot(page, shots, "status-zh")


def test_phone_sized_screen(browser: Browser, mesh: Mesh, shots: Path) -> None:
    page = new_page(browser, mesh, viewport=PHONE)
    screenshot(page, shots, "home-phone")
    user = new_user()
    register(page, mesh, user)
    screenshot(page, shots, "login-phone")
    log_in(page, user)
    page.set_input_files("[data-testid=file-input]", str(PHOTO))
    expect_result(page)
    # Nothing wider than the screen: no sideways scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, shots, "result-phone")
    page.goto(mesh.url + "#/status")
    # Not an admin: the health of each service, and a note instead of the instance tables.
    expect(page.get_by_test_id("services").locator("[data-service=ocr]")).to_contain_text("1 of 1 healthy")
    expect(page.get_by_test_id("status-limited")).to_be_visible()
    expect(page.get_by_test_id("instances")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
