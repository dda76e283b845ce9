"""The BFF's HTTP API against a real mesh: sessions, CSRF, upload limits, OCR errors, status."""

from __future__ import annotations

import io
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis import checks

from mesh.processes import free_port
from tests.corpus import CORPUS
from tests.integration.bff_fixtures import Mesh, api_client, register_and_login, running_mesh, start_bff
from tests.integration.ocr_fixtures import stop
from tests.pdf_samples import scan_pdf

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
TRUNCATED = CORPUS / "bad" / "truncated.jpg"
# One worker, one request may wait for it, and every job takes 3 s longer: really busy on demand.
BUSY_OCR = ("--instance-id", "ocr-busy", "--queue-depth", "1", "--debug-delay-ms", "3000")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("bff-api"), BUSY_OCR) as started:
        yield started


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(mesh: Mesh) -> Iterator[httpx.Client]:
    with api_client(mesh.url) as logged_in:
        register_and_login(logged_in, new_user())
        yield logged_in


def upload(
    client: httpx.Client, data: bytes, name: str = "photo.jpg", ctype: str = "image/jpeg"
) -> httpx.Response:
    return client.post("/api/ocr", files={"file": (name, data, ctype)})


def test_ready_file_names_the_url_once_auth_and_ocr_are_found(mesh: Mesh) -> None:
    assert mesh.bff.ready["missing"] == []
    assert mesh.url == f"http://{mesh.bff.ready['address']}/"
    got = httpx.get(mesh.url + "healthz")
    assert got.status_code == 200 and got.json()["status"] == "ok"
    page = httpx.get(mesh.url)
    assert page.status_code == 200 and "ocrmesh" in page.text
    assert "ocrmesh_csrf" in page.cookies
    assert page.headers["x-frame-options"] == "DENY"
    # From the OCR instance's registry record (it takes 20 MiB; the BFF itself allows 10).
    limits = httpx.get(mesh.url + "api/config").json()
    assert limits == {
        "max_upload_bytes": 10 * 1024 * 1024,
        "formats": ["JPEG", "PNG", "BMP", "TIFF", "WEBP", "PDF"],
    }


def test_an_idle_keep_alive_connection_outlives_the_clients_5_s_expiry(mesh: Mesh) -> None:
    """A connection idle for 6 s still answers: the server must not drop it at the moment common
    clients (httpx, 5 s) still reuse it, or their next POST fails with a reset."""
    host, port = mesh.bff.ready["address"].rsplit(":", 1)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for idle_s in (0, 6):
            time.sleep(idle_s)
            sock.sendall(request)
            head = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200"), f"after {idle_s} s idle: {head[:200]!r}"


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers, then Content-Length bytes of body), however it is
    split into segments, so the next request on the connection reads only its own answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data  # the server closed the connection
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return data


def test_session_cookies_are_httponly_and_samesite(mesh: Mesh) -> None:
    with api_client(mesh.url) as c:
        user = new_user()
        login = {"username": user, "password": "correct horse 42"}
        assert c.post("/api/register", json=login).status_code == 201
        got = c.post("/api/login", json=login)
        assert got.status_code == 200 and got.json()["user"]["username"] == user
        set_cookies = got.headers.get_list("set-cookie")
        for name in ("ocrmesh_access", "ocrmesh_refresh"):
            (header,) = [h for h in set_cookies if h.startswith(name + "=")]
            assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/api" in header
        assert "access_token" not in got.text and "refresh" not in got.json()
        assert c.get("/api/me").json()["user"]["username"] == user
        assert c.post("/api/logout").status_code == 200
        gone = c.get("/api/me")
        assert gone.status_code == 401 and gone.json()["error"] == "login_required"


def test_register_and_login_errors_are_explained(mesh: Mesh) -> None:
    with api_client(mesh.url) as c:
        user = new_user()
        short = c.post("/api/register", json={"username": "x", "password": "short"})
        assert short.status_code == 400
        assert set(short.json()["fields"]) == {"username", "password"}
        login = {"username": user, "password": "correct horse 42"}
        assert c.post("/api/register", json=login).status_code == 201
        taken = c.post("/api/register", json=login)
        assert taken.status_code == 409 and "taken" in taken.json()["fields"]["username"]
        wrong = c.post("/api/login", json={"username": user, "password": "wrong password"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "bad_credentials"


def test_recognition_returns_text_boxes_timing_and_instance(client: httpx.Client) -> None:
    got = upload(client, PHOTO.read_bytes(), "rapidocr_ch_en_num.jpg")
    assert got.status_code == 200, got.text
    body = got.json()
    assert "正品促销" in body["text"] and "假一赔十" in body["text"]
    assert (body["width"], body["height"]) == (323, 430)
    assert len(body["lines"]) >= 10 and all(len(line["box"]) == 4 for line in body["lines"])
    assert body["served_by"]["instance_id"] == "ocr-busy" and body["served_by"]["device"]
    assert body["timing"]["total_ms"] > 0 and body["bff_ms"] >= body["timing"]["total_ms"]
    assert body["bytes"] == PHOTO.stat().st_size


def test_a_pdf_comes_back_page_by_page(client: httpx.Client) -> None:
    got = upload(client, scan_pdf("rapidocr_text_rec.jpg", "rapidocr_short.png"), "scan.pdf")
    assert got.status_code == 200, got.text
    body = got.json()
    assert [(page["number"], page["first_line"], page["line_count"]) for page in body["pages"]] == [
        (1, 0, 1),
        (2, 1, 1),
    ]
    assert [(line["text"], line["page"]) for line in body["lines"]] == [
        ("韩国小馆", 1),
        ("中国网络空间安全", 2),
    ]
    assert body["text"] == "韩国小馆\n\f\n中国网络空间安全" and not body["pages"][0]["text_layer"]


def test_state_changing_requests_without_csrf_token_are_403(mesh: Mesh) -> None:
    login = {"username": new_user(), "password": "correct horse 42"}
    with httpx.Client(base_url=mesh.url) as c:
        c.get("/api/csrf")  # has the cookie, but sends no header
        missing = c.post("/api/login", json=login)
        assert missing.status_code == 403 and missing.json()["error"] == "csrf"
        wrong = c.post("/api/register", json=login, headers={"X-CSRF-Token": "not-the-cookie"})
        assert wrong.status_code == 403
        token = c.cookies["ocrmesh_csrf"]
        foreign = c.post(
            "/api/register", json=login, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403 and "another site" in foreign.json()["message"]
        assert c.post("/api/ocr", files={"file": ("a.jpg", b"x")}).status_code == 403
        assert c.post("/api/register", json=login, headers={"X-CSRF-Token": token}).status_code == 201


def test_uploads_over_the_limit_are_413(client: httpx.Client) -> None:
    too_big = b"\xff\xd8\xff" + bytes(10 * 1024 * 1024)
    got = upload(client, too_big)
    assert got.status_code == 413 and got.json()["error"] == "too_large"
    assert "MiB" in got.json()["message"]

    def chunked() -> Iterator[bytes]:  # a well-formed upload without Content-Length: counted as it arrives
        yield b'--xx\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        yield b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
        for _ in range(12):
            yield bytes(1024 * 1024)
        yield b"\r\n--xx--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=xx"}
    assert client.post("/api/ocr", content=chunked(), headers=headers).status_code == 413


def test_json_bodies_over_16_kib_are_413_on_every_other_route(client: httpx.Client) -> None:
    # Anonymous and CSRF-passing: two 200 MB register posts once took the BFF from 82 to 1105 MiB.
    big = {"username": "x" * (17 * 1024), "password": "correct horse battery"}
    for path in ("/api/register", "/api/login", "/api/logout"):
        got = client.post(path, json=big)
        assert got.status_code == 413, (path, got.text)
        assert got.json()["error"] == "too_large" and "16 KiB" in got.json()["message"]

    def endless() -> Iterator[bytes]:  # no Content-Length: cut off as it arrives, not read to the end
        yield b'{"username": "'
        for _ in range(64):
            yield b"x" * 1024 * 1024

    headers = {"content-type": "application/json"}
    assert client.post("/api/register", content=endless(), headers=headers).status_code == 413
    assert client.post("/api/login", json={"username": "a", "password": "b"}).status_code == 401


def test_wrong_types_are_415(client: httpx.Client) -> None:
    not_form = client.post("/api/ocr", json={"image": "aGVsbG8="})
    assert not_form.status_code == 415 and not_form.json()["error"] == "unsupported_type"
    text = upload(client, b"hello, this is not an image\n", "notes.txt", "text/plain")
    assert text.status_code == 415 and "not an image" in text.json()["message"]
    gif = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(gif, "GIF")
    got = upload(client, gif.getvalue(), "a.gif", "image/gif")
    assert got.status_code == 415 and "GIF" in got.json()["message"]


def test_a_broken_image_is_400_with_what_is_wrong(client: httpx.Client) -> None:
    got = upload(client, TRUNCATED.read_bytes(), "truncated.jpg")
    assert got.status_code == 400, got.text
    assert got.json()["error"] == "bad_image" and got.json()["message"]


def test_upload_without_a_session_is_401(mesh: Mesh) -> None:
    with api_client(mesh.url) as c:
        got = upload(c, PHOTO.read_bytes())
    assert got.status_code == 401 and got.json()["error"] == "login_required"


def test_ocr_waits_when_the_wait_fits_and_is_429_with_retry_after_when_it_cannot(
    client: httpx.Client, mesh: Mesh, tmp_path: Path
) -> None:
    data = PHOTO.read_bytes()
    # The busy instance (3 s a job, at most 1 waiting) with the BFF's 60 s: everyone is served,
    # the ones beyond the queue's cap after the retry hint.
    with ThreadPoolExecutor(3) as pool:
        waited = list(pool.map(lambda _: upload(client, data), range(3)))
    assert [a.status_code for a in waited] == [200] * 3, [a.text for a in waited]
    # A BFF that gives OCR 5.9 s: one job fits (3 s plus the OCR itself, which may take well over
    # a second on a busy machine), and a job behind another never can: it needs 6 s plus twice the OCR.
    impatient = start_bff(tmp_path, mesh.etcd, "--ocr-timeout-s", "5.9")
    try:
        with api_client(impatient.url) as c:
            register_and_login(c, new_user())
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: upload(c, data), range(4)))
    finally:
        stop(impatient.proc)
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 429 in codes, [a.text for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["error"] == "busy" and int(busy.headers["retry-after"]) >= 1


def test_an_expired_access_cookie_is_refreshed_once_for_concurrent_requests(client: httpx.Client) -> None:
    client.cookies.delete("ocrmesh_access", domain="127.0.0.1", path="/api")
    assert "ocrmesh_access" not in client.cookies
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.get("/api/me"), range(4)))
    # A refresh token is single use: without sharing one Refresh, reuse detection would end the session.
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert any("ocrmesh_access=" in h for a in answers for h in a.headers.get_list("set-cookie"))
    assert client.get("/api/me").status_code == 200


def test_status_shows_users_health_and_admins_every_instance(client: httpx.Client, mesh: Mesh) -> None:
    # An ordinary user: how many instances of each service are healthy, and nothing internal.
    got = client.get("/api/status")
    assert got.status_code == 200, got.text
    summary = got.json()
    assert summary["services"]["ocr"] == {"instances": 1, "healthy": 1}
    assert summary["services"]["auth"] == {"instances": 1, "healthy": 1}
    assert summary["detail"] is False and set(summary) == {"at", "services", "detail"}
    assert mesh.ocr[0].address not in got.text and mesh.etcd not in got.text
    # A user named in --admins (the auth service says who it is; the cookie's claims are not trusted).
    with api_client(mesh.url) as admin:
        register_and_login(admin, "api-admin")
        got = admin.get("/api/status")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["detail"] is True and body["services"] == summary["services"]
    (ocr,) = [i for i in body["instances"] if i["service"] == "ocr"]
    assert (
        ocr["id"] == "ocr-busy"
        and ocr["address"] == mesh.ocr[0].address
        and ocr["queue"] == "0 waiting, ~0.0 s"
    )
    assert [e["address"] for e in body["bff"]["ocr"]["endpoints"]] == [mesh.ocr[0].address]


def test_without_the_mesh_the_ready_file_says_what_is_missing_and_sigterm_exits_0(tmp_path: Path) -> None:
    unused = f"127.0.0.1:{free_port()}"  # nothing listens: no etcd, so no services either
    bff = start_bff(tmp_path, unused, "--ready-wait-s", "1")
    try:
        assert bff.ready["missing"] == ["auth", "ocr"] and "make up" in bff.ready["note"]
        health = httpx.get(bff.url + "healthz")
        assert health.status_code == 503 and health.json()["missing"] == ["auth", "ocr"]
        with api_client(bff.url) as c:
            down = c.post("/api/login", json={"username": "someone", "password": "correct horse 42"})
        assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1
        bff.proc.send_signal(signal.SIGTERM)
        assert bff.proc.wait(30) == 0
    finally:
        stop(bff.proc)


def test_an_ocr_call_over_the_deadline_is_504(mesh: Mesh, tmp_path: Path) -> None:
    # A second BFF on the same mesh that gives OCR 1 s: the busy instance takes 3 s longer per job.
    impatient = start_bff(tmp_path, mesh.etcd, "--ocr-timeout-s", "1")
    try:
        with api_client(impatient.url) as c:
            register_and_login(c, new_user())
            got = upload(c, PHOTO.read_bytes())
        assert got.status_code == 504 and got.json()["error"] == "timeout", got.text
        assert "did not answer in time" in got.json()["message"]
    finally:
        stop(impatient.proc)


# Property-based API tests generated from the BFF's own OpenAPI document (schemathesis): every
# operation with generated bodies, cookies and headers, against this module's real mesh. Last in
# the module: its random logins may start the login throttle.
CONFORMANCE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(mesh: Mesh) -> Any:
    return schemathesis.openapi.from_url(mesh.url + "api/openapi.json")


@pytest.fixture(scope="module")
def api_user(mesh: Mesh) -> dict[str, str]:
    credentials = {"username": new_user(), "password": "correct horse 42"}
    with api_client(mesh.url) as client:
        assert client.post("/api/register", json=credentials).status_code == 201
    return credentials


def browser_session(url: str, credentials: dict[str, str]) -> requests.Session:
    """A newly logged-in session that sends the CSRF header, as the page does."""
    session = requests.Session()
    session.headers["X-CSRF-Token"] = session.get(url + "api/csrf", timeout=30).json()["csrf"]
    assert session.post(url + "api/login", json=credentials, timeout=60).status_code == 200
    return session


def test_the_openapi_document_is_complete(mesh: Mesh) -> None:
    document = httpx.get(mesh.url + "api/openapi.json").json()
    ocr = document["paths"]["/api/ocr"]["post"]
    assert ocr["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert {"400", "401", "403", "413", "415", "429", "503", "504"} <= set(ocr["responses"])
    assert set(document["components"]["securitySchemes"]) == {"session", "refresh", "csrf"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
            for status, answer in operation["responses"].items():
                lines = (path, status) == ("/api/ocr/pages", "200")  # one JSON object per line
                [kind] = answer["content"]
                assert kind == ("application/x-ndjson" if lines else "application/json"), (
                    method,
                    path,
                    status,
                )
                assert "$ref" in answer["content"][kind]["schema"], (method, path, status)
    pages = document["paths"]["/api/ocr/pages"]["post"]
    assert pages["requestBody"] == ocr["requestBody"] and pages["security"] == ocr["security"]
    assert "page" in document["components"]["schemas"]["PagesEvent"]["properties"]


def test_every_answer_conforms_to_the_openapi_document(
    mesh: Mesh, api_schema: Any, api_user: dict[str, str]
) -> None:
    """Generated requests for every operation (valid data, then invalid data where there is a body),
    sent with a live session's cookies and CSRF header: no 5xx, and every status, content type,
    header and body is one the document declares."""
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        # A session per operation: a generated POST /api/logout ends the one it is sent with.
        with browser_session(mesh.url, api_user) as session:
            csrf = {"X-CSRF-Token": str(session.headers["X-CSRF-Token"])}
            live = {"headers": csrf, "cookies": session.cookies.get_dict()}
            runs: list[tuple[schemathesis.GenerationMode, dict[str, Any]]] = [
                (schemathesis.GenerationMode.POSITIVE, live),
                (schemathesis.GenerationMode.POSITIVE, {"headers": csrf}),  # generated (bad) cookies
            ]
            if operation.get_request_payload_content_types():  # nothing to make invalid without a body
                runs.append((schemathesis.GenerationMode.NEGATIVE, live))
            for mode, known in runs:

                @given(case=operation.as_strategy(generation_mode=mode, **known))
                @settings(
                    max_examples=6,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate],
                )
                def conforms(case: Any) -> None:
                    response = case.call(session=session, timeout=60)
                    case.validate_response(response, checks=CONFORMANCE_CHECKS)

                conforms()
    assert {"POST /api/ocr", "POST /api/ocr/pages"} <= set(labels) and len(labels) == 10, labels
