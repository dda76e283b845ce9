"""ghz flags that `ocrmesh bench` takes so that ghz command lines parse: each one either has no
effect here (and why) or is refused with why, instead of argparse's "unrecognized arguments"."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.loadgen import BenchError


@dataclass(frozen=True)
class GhzFlag:
    """One ghz flag: its spellings, whether it takes a value, and what ocrmesh bench does with it."""

    flags: tuple[str, ...]
    dest: str
    takes_value: bool
    supported: bool
    why: str
    allowed: tuple[str, ...] = ()  # values that are what ocrmesh bench does anyway (accepted)


CONTRACTS = "the ocrmesh contracts are compiled in, so methods resolve without .proto files"
SCHEDULE = "only constant load: -c closed-loop workers, optionally paced by --rps"
FLAGS = (
    GhzFlag(("--proto",), "ghz_proto", True, True, CONTRACTS),
    GhzFlag(("--protoset",), "ghz_protoset", True, True, CONTRACTS),
    GhzFlag(("-i", "--import-paths"), "ghz_import_paths", True, True, CONTRACTS),
    GhzFlag(("--skipTLS",), "ghz_skip_tls", False, True, "connections are plaintext (TLS is not supported)"),
    GhzFlag(("--cpus",), "ghz_cpus", True, True, "one asyncio event loop drives every worker"),
    GhzFlag(("--reflect-metadata",), "ghz_reflect_metadata", True, True, "server reflection is not used"),
    GhzFlag(
        ("--lb-strategy",),
        "ghz_lb_strategy",
        True,
        False,
        "one target is one channel (pick_first); several comma-separated targets or --etcd use "
        "ocrmesh's balancing client (p2c with retries), which no other strategy replaces",
        allowed=("pick_first",),
    ),
    GhzFlag(
        ("--async",),
        "ghz_async",
        False,
        False,
        "workers are closed-loop (each waits for its call); for a fixed rate use --rps with enough -c",
    ),
    GhzFlag(
        ("-x", "--max-duration"),
        "ghz_max_duration",
        True,
        False,
        "a run is either -n calls or -z time, not both; use -z for a time bound",
    ),
    GhzFlag(
        ("-e", "--enable-compression"),
        "ghz_compression",
        False,
        False,
        "calls are sent uncompressed (encoded images do not compress)",
    ),
    GhzFlag(
        ("--stream-call-count",),
        "ghz_stream_call_count",
        True,
        False,
        "streaming methods are not load-tested (unary calls only)",
    ),
    GhzFlag(("--load-schedule",), "ghz_load_schedule", True, False, SCHEDULE, allowed=("const",)),
    *(
        GhzFlag((f"--{name}",), f"ghz_{name.replace('-', '_')}", True, False, SCHEDULE)
        for name in (
            "load-start",
            "load-end",
            "load-step",
            "load-step-duration",
            "load-max-duration",
            "concurrency-schedule",
            "concurrency-start",
            "concurrency-end",
            "concurrency-step",
            "concurrency-step-duration",
            "concurrency-max-duration",
        )
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags, in their own help section that says what each does here."""
    group = parser.add_argument_group(
        "ghz flags with no effect here, or not supported (refused with the reason)",
    )
    for flag in FLAGS:
        verdict = "no effect" if flag.supported else "not supported"
        if flag.allowed:
            verdict += f" (except {'/'.join(flag.allowed)}, which is what happens anyway)"
        kwargs: dict[str, object] = {"dest": flag.dest, "help": f"{verdict}: {flag.why}"}
        if flag.takes_value:
            kwargs["metavar"] = "V"
        else:
            kwargs["action"] = "store_true"
        group.add_argument(*flag.flags, **kwargs)  # type: ignore[arg-type]


def check(ns: argparse.Namespace) -> list[str]:
    """Notes for the accepted flags that were given; BenchError naming every refused one given."""
    notes, refused = [], []
    for flag in FLAGS:
        value = getattr(ns, flag.dest, None)
        if value in (None, False):
            continue
        name = "/".join(flag.flags)
        if flag.supported or (isinstance(value, str) and value in flag.allowed):
            notes.append(f"{name} has no effect: {flag.why}")
        else:
            refused.append(f"{name} is not supported: {flag.why}")
    if refused:
        raise BenchError("; ".join(refused))
    return notes
