"""The OCR service over real gRPC on loopback: results, bad input, health, streaming, batch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ocrmesh.ocr.v1 import ocr_pb2, ocr_pb2_grpc

from mesh import balancer, errors
from mesh.ocr_client import UNARY_LIMIT_BYTES, OcrClient
from ocr_svc.idle_cores import usable_cores
from tests.corpus import CORPUS, ROOT
from tests.integration import prometheus_text
from tests.integration.ocr_fixtures import OcrProcess, running_ocr
from tests.integration.rpc_status import code, refused
from tests.pdf_samples import encrypted_pdf, scan_pdf, text_pdf

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"
BAD = CORPUS / "bad"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OcrProcess]:
    with running_ocr(tmp_path_factory.mktemp("ocr"), "--workers", "2") as svc:
        yield svc


async def _health(address: str) -> int:
    async with balancer.direct_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ocrmesh.ocr.v1.OcrService"), timeout=5
        )
        return int(reply.status)


async def test_recognizes_chinese_and_english_with_boxes_and_timings(service: OcrProcess) -> None:
    async with balancer.direct_channel(service.address) as channel:
        result = await OcrClient(channel).recognize(PHOTO.read_bytes(), PHOTO.name, timeout=60)
    assert "正品促销" in result.text
    assert "假一赔十" in result.text
    assert "10.0" in result.text  # digits and Latin characters come through too
    assert (result.width, result.height) == (323, 430)
    assert len(result.lines) >= 15
    for line in result.lines:
        assert len(line.box) == 4
        assert all(0 <= p.x <= 323 + 5 and 0 <= p.y <= 430 + 5 for p in line.box)
        assert 0.0 < line.score <= 1.0
    t = result.timing
    assert t.det_ms > 0 and t.rec_ms > 0 and t.decode_ms > 0
    assert t.total_ms >= t.det_ms + t.rec_ms
    assert result.served_by.execution_provider == "CPUExecutionProvider"
    assert result.served_by.device == "cpu"
    assert result.served_by.device_kind == ocr_pb2.DEVICE_CPU
    assert len(result.served_by.models) == 3
    assert result.served_by.worker_pid > 0


async def test_get_info_and_health(service: OcrProcess) -> None:
    assert await _health(service.address) == health_pb2.HealthCheckResponse.SERVING
    async with balancer.direct_channel(service.address) as channel:
        info = await OcrClient(channel).info()
    assert info.serving
    assert info.workers == 2 and len(info.worker_infos) == 2
    assert all(w.pid > 0 and w.rss_bytes > 0 for w in info.worker_infos)
    assert info.execution_provider == "CPUExecutionProvider"
    # --lone-request-threads auto: a request alone on the machine may use every usable core.
    assert info.lone_request_threads == max(info.threads_per_worker, usable_cores())
    assert info.queue_capacity == 0  # no count cap by default
    assert info.max_queue_wait_ms == pytest.approx(60_000) and info.max_queued_bytes == 256 * 2**20
    assert info.service_ms > 0 and info.predicted_wait_ms >= 0
    assert info.limits.max_image_pixels == 40_000_000
    # The clearer fields added beside the deprecated ones (issue 19) say the same thing.
    assert info.device_kind == ocr_pb2.DEVICE_CPU and info.queued_requests == info.queue_depth
    assert list(info.limits.image_formats) == [
        ocr_pb2.IMAGE_FORMAT_JPEG,
        ocr_pb2.IMAGE_FORMAT_PNG,
        ocr_pb2.IMAGE_FORMAT_BMP,
        ocr_pb2.IMAGE_FORMAT_TIFF,
        ocr_pb2.IMAGE_FORMAT_WEBP,
        ocr_pb2.IMAGE_FORMAT_PDF,
    ]
    states = {ocr_pb2.WORKER_STATE_IDLE, ocr_pb2.WORKER_STATE_BUSY}
    assert all(w.worker_state in states and w.worker_state != 0 for w in info.worker_infos)
    assert [ocr_pb2.WorkerState.Name(w.worker_state) for w in info.worker_infos] == [
        f"WORKER_STATE_{w.state.upper()}" for w in info.worker_infos
    ]


EXPECTED_REJECTS = {
    "empty.png": "IMAGE_EMPTY",
    "random_bytes.png": "IMAGE_NOT_AN_IMAGE",
    "truncated.jpg": "IMAGE_TRUNCATED",
    "bomb_header_30000x30000.png": "IMAGE_TOO_MANY_PIXELS",
    "bomb_valid_30000x30000_1bit.png": "IMAGE_TOO_MANY_PIXELS",
}


async def test_every_bad_file_gets_invalid_argument_with_details(service: OcrProcess) -> None:
    peak = [service.tree_rss_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], service.tree_rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    baseline = peak[0]
    try:
        async with balancer.direct_channel(service.address) as channel:
            client = OcrClient(channel)
            for name, reason in EXPECTED_REJECTS.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.recognize((BAD / name).read_bytes(), name, timeout=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                status = errors.from_call_error(caught.value)
                violations = errors.field_violations(status)
                assert violations and violations[0].reason == reason, (name, violations)
                assert errors.error_reason(status) == reason, name  # one vocabulary for both
                assert violations[0].field == "image" and violations[0].description
    finally:
        done.set()
        sampler.join()
    # The 30000x30000 bombs were never decoded: decoding one would add 0.9-2.7 GB.
    assert peak[0] - baseline < 300 * 2**20, (baseline, peak[0])
    assert await _health(service.address) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("grayscale_text.png", "Grayscale"),
        ("transparent_text.png", "Transparent"),
        ("tiny_1x1.png", ""),
    ],
)
async def test_valid_edge_images_are_read(service: OcrProcess, name: str, expected: str) -> None:
    async with balancer.direct_channel(service.address) as channel:
        result = await OcrClient(channel).recognize((BAD / name).read_bytes(), name, timeout=60)
    assert expected in result.text
    if not expected:
        assert result.lines == [] and (result.width, result.height) == (1, 1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("light_text_on_transparent.png", ["Open 24 hours, free Wi-Fi"]),
        ("light_zh_en_on_transparent.png", ["透明背景文字", "Transparent background"]),
    ],
)
async def test_light_text_on_transparent_is_read(service: OcrProcess, name: str, expected: list[str]) -> None:
    # White ink on fully transparent pixels (tests/accuracy/): composited onto white it read nothing.
    data = (ROOT / "tests" / "accuracy" / name).read_bytes()
    async with balancer.direct_channel(service.address) as channel:
        result = await OcrClient(channel).recognize(data, name, timeout=60)
    assert [line.text for line in result.lines] == expected


PDF_PAGES = [
    ["韩国小馆"],
    ["To facilitate the shot type analysis in videos, we collect MovieShots, a large-scale"],
    ["中国网络空间安全"],
]


async def test_a_pdf_comes_back_page_by_page_unary_and_streamed(service: OcrProcess) -> None:
    data = scan_pdf("rapidocr_text_rec.jpg", "rapidocr_en_rec.jpg", "rapidocr_short.png")

    async def parts() -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
        yield ocr_pb2.RecognizeStreamRequest(
            header=ocr_pb2.RecognizeStreamHeader(filename="scan.pdf", total_bytes=len(data))
        )
        for i in range(0, len(data), 64 * 1024):
            yield ocr_pb2.RecognizeStreamRequest(chunk=data[i : i + 64 * 1024])

    async with balancer.direct_channel(service.address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        request = ocr_pb2.RecognizeRequest(image=data, filename="scan.pdf")
        before = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
        unary = (await stub.Recognize(request, timeout=120)).result
        after = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
        streamed = (await stub.RecognizeStream(parts(), timeout=120)).result
        layer = text_pdf(["Invoice 2026-117", "Total due: 42.00"], pages=2)
        options = ocr_pb2.RecognizeOptions(use_text_layer=True)
        embedded = (
            await stub.Recognize(ocr_pb2.RecognizeRequest(image=layer, options=options), timeout=60)
        ).result
        info = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
    for result in (unary, streamed):
        assert [page.number for page in result.pages] == [1, 2, 3]
        assert [
            [line.text for line in result.lines[page.first_line : page.first_line + page.line_count]]
            for page in result.pages
        ] == PDF_PAGES
        assert [line.page for line in result.lines] == [1, 2, 3]
        assert result.text.split("\n\f\n") == ["\n".join(lines) for lines in PDF_PAGES]
        assert all(page.source == ocr_pb2.PAGE_SOURCE_OCR and page.dpi > 0 for page in result.pages)
        assert (result.width, result.height) == (result.pages[0].width, result.pages[0].height)
    # One job per page. (Whether they ran on both workers at once depends on other callers: images
    # read by earlier tests keep a worker free for 10 s; test_pdf_acceptance sees a PDF alone.)
    done = {w.pid: w.jobs_done for w in before.worker_infos}
    assert sum(w.jobs_done - done.get(w.pid, 0) for w in after.worker_infos) == 3
    assert [page.source for page in embedded.pages] == [ocr_pb2.PAGE_SOURCE_TEXT_LAYER] * 2
    assert embedded.text == "Invoice 2026-117\nTotal due: 42.00\n\f\nInvoice 2026-117\nTotal due: 42.00"
    assert ocr_pb2.IMAGE_FORMAT_PDF in info.limits.image_formats and info.limits.max_pdf_pages == 100


async def test_recognize_pages_streams_a_pdf_page_by_page_and_an_image_whole(service: OcrProcess) -> None:
    pdf = scan_pdf("rapidocr_text_rec.jpg", "rapidocr_en_rec.jpg", "rapidocr_short.png")
    for data, name, steps in (
        (pdf, "scan.pdf", ["accepted", "page", "page", "page", "result"]),
        (PHOTO.read_bytes(), PHOTO.name, ["accepted", "result"]),
    ):
        replies: list[ocr_pb2.RecognizePagesResponse] = []
        async with balancer.direct_channel(service.address) as channel:
            result = await OcrClient(channel).recognize_pages(data, _into(replies), name, timeout=120)
        assert [r.WhichOneof("event") for r in replies] == steps, name
        assert replies[0].accepted.page_count == (3 if name == "scan.pdf" else 1)
        pages = [r.page for r in replies if r.WhichOneof("event") == "page"]
        assert [[line.text for line in p.lines] for p in pages] == (PDF_PAGES if name == "scan.pdf" else [])
        assert [p.page for p in pages] == list(result.pages)  # the same pages as the result says
        assert replies[-1].result == result
    assert "正品促销" in result.text


def _into(
    replies: list[ocr_pb2.RecognizePagesResponse],
) -> Callable[[ocr_pb2.RecognizePagesResponse], Awaitable[None]]:
    async def hear(reply: ocr_pb2.RecognizePagesResponse) -> None:
        replies.append(reply)

    return hear


async def test_an_image_sent_behind_a_pdf_is_not_kept_waiting_for_all_its_pages(service: OcrProcess) -> None:
    pdf = scan_pdf(*["rapidocr_en.jpg"] * 8)
    small = (CORPUS / "real" / "rapidocr_text_rec.jpg").read_bytes()
    finished: list[str] = []
    async with balancer.direct_channel(service.address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)

        async def send(name: str, data: bytes) -> ocr_pb2.OcrResult:
            answer = await stub.Recognize(ocr_pb2.RecognizeRequest(image=data, filename=name), timeout=240)
            finished.append(name)
            return answer.result

        before = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
        document = asyncio.create_task(send("pdf", pdf))
        # Once the PDF's pages wait in the queue (both workers busy with its first two), the image
        # joins: taken in turn, it waits for one page, not the six still queued.
        for _ in range(600):
            info = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
            if info.queued_requests >= 4:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the PDF's pages never waited in the queue")
        image = await send("image", small)
        after = await stub.GetInfo(ocr_pb2.GetInfoRequest(), timeout=10)
        assert image.text == "韩国小馆"
        result = await document
    assert finished == ["image", "pdf"] and len(result.pages) == 8
    # Pages read by the time the image was answered: the two running, about one more each; first
    # come, first served would have read at least 7 (the image started after the 8th page did).
    pages_done = (
        sum(w.jobs_done for w in after.worker_infos) - sum(w.jobs_done for w in before.worker_infos) - 1
    )
    assert pages_done <= 5, pages_done


def test_the_cli_prints_a_pdfs_pages_in_order(service: OcrProcess, tmp_path: Path) -> None:
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(scan_pdf("rapidocr_text_rec.jpg", "rapidocr_en_rec.jpg", "rapidocr_short.png"))
    argv = [sys.executable, "-m", "cli", "ocr", str(pdf), "--target", service.address, "--timeout", "120"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.removesuffix("\n").split("\n\f\n") == ["\n".join(lines) for lines in PDF_PAGES]


async def test_broken_and_oversized_pdfs_get_invalid_argument_and_the_service_stays_healthy(
    service: OcrProcess,
) -> None:
    whole = text_pdf(["x"])
    cases = {
        "truncated": (whole[: len(whole) // 2], "IMAGE_TRUNCATED"),
        "encrypted": (encrypted_pdf(), "IMAGE_ENCRYPTED"),
        "malformed": (b"%PDF-1.7\nthis is no PDF body at all\n%%EOF\n", "IMAGE_CORRUPT"),
        "2000 pages": (text_pdf(["x"], pages=2000), "IMAGE_TOO_MANY_PAGES"),
        "200-inch page": (text_pdf(["x"], media_box=b"0 0 14400 14400"), "IMAGE_TOO_MANY_PIXELS"),
    }
    async with balancer.direct_channel(service.address) as channel:
        client = OcrClient(channel)
        for name, (data, reason) in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.recognize(data, f"{name}.pdf", timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            status = errors.from_call_error(caught.value)
            assert errors.error_reason(status) == reason, name
            assert errors.field_violations(status)[0].description, name
    assert await _health(service.address) == health_pb2.HealthCheckResponse.SERVING


async def test_large_image_streams_in_chunks(service: OcrProcess) -> None:
    large = CORPUS / "large" / "large_4000x3000.jpg"
    data = large.read_bytes()
    assert len(data) < UNARY_LIMIT_BYTES  # the stream is used below explicitly
    async with balancer.direct_channel(service.address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)

        async def parts() -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
            yield ocr_pb2.RecognizeStreamRequest(
                header=ocr_pb2.RecognizeStreamHeader(filename=large.name, total_bytes=len(data))
            )
            for i in range(0, len(data), 256 * 1024):
                yield ocr_pb2.RecognizeStreamRequest(chunk=data[i : i + 256 * 1024])

        reply = await stub.RecognizeStream(parts(), timeout=120)
    assert (reply.result.width, reply.result.height) == (4000, 3000)
    assert "STUDENT" in reply.result.text.upper()


async def test_stream_rejects_oversize_upload_early(service: OcrProcess) -> None:
    async with balancer.direct_channel(service.address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)

        async def parts() -> AsyncIterator[ocr_pb2.RecognizeStreamRequest]:
            yield ocr_pb2.RecognizeStreamRequest(header=ocr_pb2.RecognizeStreamHeader(total_bytes=10**9))

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecognizeStream(parts(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(errors.from_call_error(caught.value))[0].reason == "IMAGE_TOO_MANY_BYTES"


async def test_batch_returns_a_status_per_item(service: OcrProcess) -> None:
    items = [
        ocr_pb2.RecognizeBatchRequest(item_id="photo", image=PHOTO.read_bytes()),
        ocr_pb2.RecognizeBatchRequest(item_id="empty", image=b""),
        ocr_pb2.RecognizeBatchRequest(item_id="gray", image=(BAD / "grayscale_text.png").read_bytes()),
    ]

    async def requests() -> AsyncIterator[ocr_pb2.RecognizeBatchRequest]:
        for item in items:
            yield item

    async with balancer.direct_channel(service.address) as channel:
        stub = ocr_pb2_grpc.OcrServiceStub(channel)
        replies = {r.item_id: r async for r in stub.RecognizeBatch(requests(), timeout=120)}
    assert set(replies) == {"photo", "empty", "gray"}
    assert replies["photo"].status.code == 0 and "正品促销" in replies["photo"].result.text
    assert replies["empty"].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert errors.field_violations(replies["empty"].status)[0].reason == "IMAGE_EMPTY"
    assert "Grayscale" in replies["gray"].result.text


async def test_per_request_options_do_not_leak(service: OcrProcess) -> None:
    """A request that turns detection off must not change what the next request gets."""
    data = PHOTO.read_bytes()
    async with balancer.direct_channel(service.address) as channel:
        client = OcrClient(channel)
        before = await client.recognize(data, timeout=60)
        # Both workers get a no-detection job, then the defaults again.
        await asyncio.gather(
            *(
                client.recognize(
                    data, options=ocr_pb2.RecognizeOptions(use_det=False, min_score=0.0), timeout=60
                )
                for _ in range(2)
            )
        )
        after = await asyncio.gather(*(client.recognize(data, timeout=60) for _ in range(2)))
    assert len(before.lines) >= 15
    for result in after:
        assert [line.text for line in result.lines] == [line.text for line in before.lines]


async def test_every_metric_has_samples_after_a_short_load(service: OcrProcess) -> None:
    async with balancer.direct_channel(service.address) as channel:
        client = OcrClient(channel)
        await client.recognize(PHOTO.read_bytes(), PHOTO.name, timeout=60)
        await client.info()
        status = await refused(ocr_pb2_grpc.OcrServiceStub(channel).Recognize(ocr_pb2.RecognizeRequest()))
    assert code(status) == grpc.StatusCode.INVALID_ARGUMENT
    metrics = await asyncio.to_thread(prometheus_text.scrape, service.metrics)  # raises if malformed
    assert metrics.empty_families() == [], "declared metrics without a sample after the load"
    assert metrics.value("ocrmesh_ocr_requests_total", method="Recognize", code="OK") >= 1
    assert metrics.value("ocrmesh_ocr_requests_total", method="Recognize", code="INVALID_ARGUMENT") >= 1
    assert metrics.value("ocrmesh_ocr_requests_total", method="GetInfo", code="OK") >= 1
    assert metrics.value("ocrmesh_ocr_stage_seconds_count", stage="det") >= 1
    assert metrics.value("ocrmesh_ocr_completed_total") >= 1
    for name in ("ocrmesh_ocr_queue_depth", "ocrmesh_ocr_in_flight", "ocrmesh_ocr_rejected_busy"):
        assert name in metrics.help
    assert all(len(h) >= 30 and not h.startswith("Total ") for h in metrics.help.values()), metrics.help


def test_ready_file_and_log_lines_are_json(service: OcrProcess) -> None:
    lines = [ln for ln in service.log_text().splitlines() if ln.startswith("{")]
    assert lines, service.log_text()
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("msg") == "serving" for r in records)
    rpcs = [r for r in records if r.get("msg") == "rpc"]
    assert rpcs and all("request_id" in r and "code" in r for r in rpcs)


def test_help_for_every_command() -> None:
    import subprocess
    import sys

    for args in (
        ["--help"],
        ["serve", "ocr", "--help"],
        ["ocr", "--help"],
        ["info", "--help"],
        ["bench", "engine", "--help"],
        ["up", "--help"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            timeout=60,
        )
        assert proc.returncode == 0, (args, proc.stderr)
        assert "usage:" in proc.stdout, args


async def test_health_watch_streams_through_the_interceptors(service: OcrProcess) -> None:
    async with balancer.direct_channel(service.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="ocrmesh.ocr.v1.OcrService"), timeout=5
        )
        first = await stream.read()
        stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
