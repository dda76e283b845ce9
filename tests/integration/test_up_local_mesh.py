"""LocalMesh (the core of `ocrmesh up` and the sweep) starts on free ports, reports ready info, stops all."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from deploy.supervisor import LocalMesh, MeshPorts


def _alive(pid: int) -> bool:
    return bool(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)


async def test_local_mesh_on_free_ports_starts_ready_and_stops_every_process(tmp_path: Path) -> None:
    said: list[str] = []
    mesh = LocalMesh(
        ocr=1,
        auth=1,
        gateway=False,
        bff=False,
        data_dir=tmp_path,
        ports=MeshPorts.ephemeral(),
        say=said.append,
    )
    async with mesh:
        info = mesh.ready_info()
        assert set(info) == {"etcd", "auth-1", "ocr-1"}
        assert info["ocr-1"]["require_auth"] is True
        assert mesh.addresses("ocr") == [info["ocr-1"]["address"]]
        assert not mesh.addresses("ocr")[0].endswith(":50051")  # a free port, not the default
        assert mesh.gateway_address is None and mesh.bff_url is None
        pids = mesh.pids()
        assert set(pids) == {"etcd", "auth-1", "ocr-1"}
        assert all(_alive(pid) for pid in pids.values())
    assert [line.split()[1] for line in said if line.startswith("starting ")] == ["etcd", "auth-1", "ocr-1"]
    assert not [pid for pid in pids.values() if _alive(pid)]


async def test_a_part_that_fails_to_start_stops_the_rest_and_names_its_log(tmp_path: Path) -> None:
    mesh = LocalMesh(
        ocr=1,
        auth=0,
        gateway=False,
        bff=False,
        data_dir=tmp_path,
        ports=MeshPorts.ephemeral(),
        ocr_args=("--no-such-flag",),
    )
    with pytest.raises(RuntimeError, match=r"ocr-1 exited with 2; see .*ocr-1\.log"):
        await mesh.start()
    assert not mesh.etcd.running
    assert mesh.started == []
