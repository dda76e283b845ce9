"""`--engine ghz`: run the real ghz binary (https://ghz.sh) with the same options, read its JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from bench.durations import format_duration
from bench.loadgen import BenchError, LoadOptions, MethodInfo, RequestData, delimited

INSTALL_HINT = "install it from https://ghz.sh or use the built-in engine (--engine builtin)"
REPORT_WAIT_S = 30.0  # how long ghz may take to write its report after Ctrl-C


def find_ghz() -> str:
    """The ghz binary on PATH, or a BenchError saying how to get one."""
    found = shutil.which("ghz")
    if found is None:
        raise BenchError(f"--engine ghz: no `ghz` binary on PATH; {INSTALL_HINT}")
    return found


def protoset(method: MethodInfo) -> bytes:
    """A serialized FileDescriptorSet with the method's file and its imports (ghz --protoset),
    so ghz needs neither .proto files nor server reflection."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)  # imports first

    service = method.full_name.rpartition(".")[0]
    visit(descriptor_pool.Default().FindFileContainingSymbol(service))  # imports the input type
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        file.CopyToProto(result.file.add())
    return bytes(result.SerializeToString())


def ghz_command(
    options: LoadOptions,
    target: str,
    method: MethodInfo,
    *,
    protoset_path: str,
    data_path: str,
    data_is_binary: bool,
    ghz: str = "ghz",
) -> list[str]:
    """ghz's command line for `options`; the data file holds JSON (-D) or binary messages (-B)."""
    cmd = [ghz, "--call", method.full_name, "--protoset", protoset_path]
    cmd += ["-B", data_path] if data_is_binary else ["-D", data_path]
    cmd += ["-c", str(options.concurrency)]
    if options.duration_s:
        cmd += ["-z", format_duration(options.duration_s)]
        cmd += ["--duration-stop", options.duration_stop]
    else:
        cmd += ["-n", str(options.total)]
    if options.rps:
        cmd += ["--rps", str(options.rps)]
    cmd += ["-t", format_duration(options.timeout_s)]
    cmd += ["--connections", str(options.connections)]
    cmd += ["--connect-timeout", format_duration(options.connect_timeout_s)]
    if options.metadata:
        cmd += ["-m", json.dumps(dict(options.metadata), separators=(",", ":"))]
    if options.name:
        cmd += ["--name", options.name]
    cmd += ["--tags", json.dumps(options.report_tags("ghz"), separators=(",", ":"))]
    if options.count_errors:
        cmd.append("--count-errors")
    if options.skip_first:
        cmd += ["--skipFirst", str(options.skip_first)]
    # Plaintext is the only transport for now, in both engines.
    cmd += ["--insecure", "-O", "json", target]
    return cmd


def _data_file(data: RequestData) -> tuple[bytes, bool]:
    if data.json_value is not None:
        return json.dumps(data.json_value).encode(), False
    if data.binary:
        blob = data.messages[0] if len(data.messages) == 1 else delimited(data.messages)
        return blob, True
    return b"{}", False  # no data given: ghz sends the empty message for "{}"


def run_ghz(options: LoadOptions, target: str, method: MethodInfo, data: RequestData) -> dict[str, Any]:
    """Run ghz to completion (Ctrl-C reaches it too and it still reports) and return its report."""
    ghz = find_ghz()
    with tempfile.TemporaryDirectory(prefix="ocrmesh-ghz-") as tmp:
        protoset_path = Path(tmp, "call.protoset")
        protoset_path.write_bytes(protoset(method))
        blob, is_binary = _data_file(data)
        data_path = Path(tmp, "data.bin" if is_binary else "data.json")
        data_path.write_bytes(blob)
        cmd = ghz_command(
            options,
            target,
            method,
            protoset_path=str(protoset_path),
            data_path=str(data_path),
            data_is_binary=is_binary,
            ghz=ghz,
        )
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                out, err = proc.communicate()
            except KeyboardInterrupt:  # ghz got the SIGINT as well: let it write the report
                try:
                    out, err = proc.communicate(timeout=REPORT_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise KeyboardInterrupt from None
    if proc.returncode != 0:
        lines = (err or "").strip().splitlines()
        raise BenchError(f"ghz failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")
    try:
        report: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as exc:
        raise BenchError(f"ghz printed no JSON report: {exc}") from None
    return report
