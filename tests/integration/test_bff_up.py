"""The BFF as `ocrmesh up` runs it (LocalMesh): its URL is reported and the mesh works through it."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from deploy.supervisor import LocalMesh, MeshPorts
from tests.corpus import CORPUS

PHOTO = CORPUS / "real" / "rapidocr_ch_en_num.jpg"


async def test_ocrmesh_up_runs_the_bff_and_the_page_reaches_auth_and_ocr(tmp_path: Path) -> None:
    mesh = LocalMesh(ocr=1, auth=1, gateway=False, bff=True, data_dir=tmp_path, ports=MeshPorts.ephemeral())
    async with mesh:
        url = mesh.bff_url
        assert url is not None and url.startswith("http://127.0.0.1:") and not url.endswith(":8000/")
        assert mesh.ready_info()["bff"]["missing"] == []  # it found auth and OCR before saying ready
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            assert "ocrmesh" in (await client.get("/")).text
            client.headers["X-CSRF-Token"] = (await client.get("/api/csrf")).json()["csrf"]
            login = {"username": f"up-{uuid.uuid4().hex[:8]}", "password": "correct horse 42"}
            assert (await client.post("/api/register", json=login)).status_code == 201
            assert (await client.post("/api/login", json=login)).status_code == 200
            upload = {"file": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")}
            got = await client.post("/api/ocr", files=upload)
            assert got.status_code == 200, got.text
            assert "正品促销" in got.json()["text"]
            assert got.json()["served_by"]["instance_id"] == mesh.ready_info()["ocr-1"]["instance_id"]
            status = (await client.get("/api/status")).json()
            assert status["services"]["ocr"] == {"instances": 1, "healthy": 1}
