"""`ocrmesh up` layout: auth ports count down away from OCR's, clashes are refused, children's flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from deploy import supervisor


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    supervisor.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_run_one_auth_instance_on_50050_and_ocr_requires_tokens(tmp_path: Path) -> None:
    ns = parse()
    assert (ns.auth, ns.auth_port, ns.no_auth) == (1, 50050, False)
    assert supervisor.auth_ports(50050, 3) == [50050, 50049, 50048]
    assert supervisor.port_clash(parse("--ocr", "4", "--auth", "4")) is None
    auth = supervisor.auth_child(1, "127.0.0.1:2379", "127.0.0.1", 50050, tmp_path)
    assert auth.argv[:2] == ["serve", "auth"] and "--etcd" in auth.argv
    assert auth.argv[auth.argv.index("--db") + 1].endswith(str(tmp_path / "auth.db"))
    ocr = supervisor.ocr_child(1, "127.0.0.1:2379", "127.0.0.1", 50051, 1, None, tmp_path, require_auth=True)
    assert "--require-auth" in ocr.argv
    assert "--require-auth" not in supervisor.ocr_child(1, "e:1", "h", 1, 1, None, tmp_path).argv


def test_port_clashes_are_refused_with_the_flag_to_change() -> None:
    clash = supervisor.port_clash(parse("--auth-port", "50052", "--ocr", "2"))
    assert clash is not None and "50052" in clash and "--auth-port" in clash
    assert supervisor.port_clash(parse("--etcd-port", "50050")) is not None
    assert supervisor.port_clash(parse("--etcd-port", "50050", "--no-auth")) is None
    assert supervisor.run(parse("--auth", "0")) == 2
