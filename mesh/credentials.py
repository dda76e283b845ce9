"""Client credentials: `--token` or `--login USER[:PASSWORD]`, turned into `authorization` metadata."""

from __future__ import annotations

import argparse
import getpass
import os
import random
from collections.abc import Callable, Mapping, Sequence

import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh import balancer, errors
from mesh.discovery import Discovery
from mesh.etcd_client import ETCD_ERRORS

TOKEN_ENV = "OCRMESH_TOKEN"
PASSWORD_ENV = "OCRMESH_PASSWORD"
ETCD_ENV = "OCRMESH_ETCD"
DEFAULT_AUTH_TARGET = "127.0.0.1:50050"
AUTH_SERVICE = "auth"
LOGIN_TIMEOUT_S = 15.0
DISCOVERY_TIMEOUT_S = 3.0

Metadata = list[tuple[str, str]]
Prompt = Callable[[str], str]


class CredentialsError(Exception):
    """Credentials could not be had; the message says why and what to do (print it as is)."""


def add_arguments(parser: argparse.ArgumentParser, *, etcd_flag: bool = False) -> None:
    """Add --token, --login and --auth-target (and --etcd when `etcd_flag`, for commands without one).

    `resolve_metadata(ns)` then turns the parsed flags into call metadata.
    """
    group = parser.add_argument_group("credentials (when the service requires an access token)")
    group.add_argument(
        "--token",
        metavar="TOKEN",
        default=None,
        help=f"access token to send (env {TOKEN_ENV}; the environment keeps it out of `ps`)",
    )
    group.add_argument(
        "--login",
        metavar="USER[:PASSWORD]",
        default=None,
        help=f"log in first and use the token it returns; the password comes from {PASSWORD_ENV} "
        "or a prompt unless given after the colon",
    )
    group.add_argument(
        "--auth-target",
        metavar="HOST:PORT",
        default=None,
        help="auth service for --login (default: an `auth` instance registered in --etcd when given, "
        f"else {DEFAULT_AUTH_TARGET})",
    )
    if etcd_flag:
        group.add_argument(
            "--etcd",
            metavar="HOST:PORT,...",
            default=None,
            help=f"etcd to discover the auth service in (env {ETCD_ENV})",
        )


def bearer(token: str) -> Metadata:
    """`authorization: Bearer <token>` as call metadata."""
    return [("authorization", f"Bearer {token}")]


def split_login(value: str) -> tuple[str, str | None]:
    """("user", "password") from "user:password"; ("user", None) from "user" or "user:"."""
    user, sep, password = value.partition(":")
    user = user.strip()
    if not user:
        raise CredentialsError("--login needs a user name: --login USER or --login USER:PASSWORD")
    return user, (password if sep and password else None)


def read_password(
    user: str,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Prompt | None = None,
    confirm: bool = False,
) -> str:
    """The password of `user`: from OCRMESH_PASSWORD, else asked for without echo."""
    environ = os.environ if environ is None else environ
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    ask = prompt or getpass.getpass
    try:
        password = ask(f"password for {user}: ")
        if confirm and ask(f"password for {user} again: ") != password:
            raise CredentialsError("the two passwords differ")
    except EOFError:
        raise CredentialsError(
            f"no password for {user}: set {PASSWORD_ENV}, run interactively, or use --login {user}:PASSWORD"
        ) from None
    if not password:
        raise CredentialsError(f"empty password for {user}")
    return password


async def auth_targets(auth_target: str | None, etcd: str | None) -> list[str]:
    """Where to log in: the explicit target, else the `auth` instances in etcd, else the default."""
    if auth_target:
        return [auth_target]
    if not etcd:
        return [DEFAULT_AUTH_TARGET]
    try:
        discovery = Discovery(etcd, AUTH_SERVICE)
    except ValueError as exc:  # a malformed endpoint list
        raise CredentialsError(f"--etcd {etcd!r}: {exc}") from None
    try:
        synced = await discovery.start(timeout=DISCOVERY_TIMEOUT_S)
        found = [inst.address for inst in discovery.endpoints().values()]
    except ETCD_ERRORS as exc:
        raise CredentialsError(f"cannot read the registry in etcd {etcd}: {exc!r}") from None
    finally:
        await discovery.close()
    if not synced:
        raise CredentialsError(f"cannot reach etcd at {etcd} to find the auth service; pass --auth-target")
    if not found:
        raise CredentialsError(
            f"no auth service is registered in etcd {etcd}; start one (`make up`) or pass --auth-target"
        )
    return random.sample(found, len(found))


def explain_login_error(exc: grpc.aio.AioRpcError, user: str, target: str) -> str:
    """A one-line explanation of a failed Login or Register."""
    status = errors.from_call_error(exc)
    code = exc.code()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"login as {user!r} failed: {status.message or 'wrong user name or password'}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = errors.retry_delay_s(status)
        hint = f"; retry in {delay:.0f}s" if delay is not None else ""
        return f"login as {user!r} refused for now: {status.message}{hint}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        found = errors.field_violations(status)
        return "; ".join(f"{v.field}: {v.description}" for v in found) or status.message
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return (
            f"cannot reach an auth service at {target} ({exc.details()}); "
            "start one (`make up`) or pass --auth-target HOST:PORT"
        )
    return f"{code.name} from the auth service at {target}: {status.message or exc.details()}"


def _retry_elsewhere(exc: grpc.aio.AioRpcError) -> bool:
    """True when another auth instance may succeed (this one is down, draining or stuck)."""
    return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def login(
    targets: Sequence[str], user: str, password: str, timeout: float = LOGIN_TIMEOUT_S
) -> auth_pb2.LoginResponse:
    """Log in at the first target that answers; CredentialsError saying why when none accepts."""
    if not targets:
        raise CredentialsError("no auth service to log in at")
    last: tuple[grpc.aio.AioRpcError, str] | None = None
    for target in targets:
        async with balancer.direct_channel(target, AUTH_SERVICE) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            try:
                return await stub.Login(
                    auth_pb2.LoginRequest(username=user, password=password), timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                if not _retry_elsewhere(exc):
                    raise CredentialsError(explain_login_error(exc, user, target)) from None
                last = (exc, target)
    assert last is not None
    raise CredentialsError(explain_login_error(last[0], user, ", ".join(targets))) from None


async def resolve_metadata(
    ns: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    prompt: Prompt | None = None,
) -> Metadata:
    """Call metadata from the parsed flags: `[("authorization", "Bearer …")]`, or `[]`.

    Precedence: --token, then --login (logs in now), then OCRMESH_TOKEN; --token with --login is
    an error. Raises CredentialsError with a printable message when credentials cannot be had.
    """
    environ = os.environ if environ is None else environ
    token: str | None = getattr(ns, "token", None)
    login_as: str | None = getattr(ns, "login", None)
    if token and login_as:
        raise CredentialsError("give either --token or --login, not both")
    if token:
        return bearer(token.strip())
    if login_as:
        user, password = split_login(login_as)
        if password is None:
            password = read_password(user, environ=environ, prompt=prompt)
        etcd = getattr(ns, "etcd", None) or environ.get(ETCD_ENV) or None
        targets = await auth_targets(getattr(ns, "auth_target", None), etcd)
        reply = await login(targets, user, password)
        return bearer(reply.tokens.access_token)
    if environ.get(TOKEN_ENV, "").strip():
        return bearer(environ[TOKEN_ENV].strip())
    return []
