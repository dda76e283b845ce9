"""`ocrmesh account register|login|whoami`: create an account, get an access token, check one."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import grpc
from ocrmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh import balancer, credentials
from mesh.credentials import CredentialsError

CALL_TIMEOUT_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-target",
        metavar="HOST:PORT",
        default=None,
        help="auth service (default: an `auth` instance registered in --etcd when given, "
        f"else {credentials.DEFAULT_AUTH_TARGET})",
    )
    parser.add_argument(
        "--etcd",
        metavar="HOST:PORT,...",
        default=None,
        help=f"etcd to discover the auth service in (env {credentials.ETCD_ENV})",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    register = sub.add_parser(
        "register", help=f"create an account (password from {credentials.PASSWORD_ENV} or a prompt)"
    )
    register.add_argument("user", metavar="USER")
    login = sub.add_parser(
        "login",
        help="log in and print the access token on stdout "
        f"(e.g. `export {credentials.TOKEN_ENV}=$(ocrmesh account login alice)`)",
    )
    login.add_argument("user", metavar="USER[:PASSWORD]")
    whoami = sub.add_parser("whoami", help=f"show the user behind --token or {credentials.TOKEN_ENV}")
    whoami.add_argument("--token", default=None, help=f"access token (env {credentials.TOKEN_ENV})")


async def _targets(ns: argparse.Namespace) -> list[str]:
    etcd = ns.etcd or os.environ.get(credentials.ETCD_ENV) or None
    return await credentials.auth_targets(ns.auth_target, etcd)


async def _register(ns: argparse.Namespace) -> int:
    user = ns.user
    password = credentials.read_password(user, confirm=True)
    targets = await _targets(ns)
    target = targets[0]
    async with balancer.direct_channel(target, "auth") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            reply = await stub.Register(
                auth_pb2.RegisterRequest(username=user, password=password), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise CredentialsError(f"user name {user!r} is taken") from None
            raise CredentialsError(credentials.explain_login_error(exc, user, target)) from None
    print(f"registered {reply.user.username} (user id {reply.user.user_id}) at {target}", file=sys.stderr)
    print(f"next: ocrmesh ocr IMAGE --login {reply.user.username} --auth-target {target}", file=sys.stderr)
    return 0


async def _login(ns: argparse.Namespace) -> int:
    user, password = credentials.split_login(ns.user)
    if password is None:
        password = credentials.read_password(user)
    reply = await credentials.login(await _targets(ns), user, password)
    left = reply.tokens.access_expires_at.seconds - time.time()
    print(reply.tokens.access_token)
    print(f"logged in as {reply.user.username}; the token is valid for {left / 60:.0f} min", file=sys.stderr)
    return 0


async def _whoami(ns: argparse.Namespace) -> int:
    token = ns.token or os.environ.get(credentials.TOKEN_ENV, "").strip()
    if not token:
        raise CredentialsError(f"no token: pass --token or set {credentials.TOKEN_ENV}")
    target = (await _targets(ns))[0]
    async with balancer.direct_channel(target, "auth") as channel:
        try:
            reply = await auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
                auth_pb2.WhoAmIRequest(), metadata=credentials.bearer(token), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise CredentialsError(f"{exc.code().name}: {exc.details()}") from None
    left = reply.token_expires_at.seconds - time.time()
    print(f"{reply.user.username} (user id {reply.user.user_id}); token valid for {left / 60:.0f} min")
    return 0


async def _run(ns: argparse.Namespace) -> int:
    actions = {"register": _register, "login": _login, "whoami": _whoami}
    return await actions[ns.action](ns)


def run(ns: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(ns))
    except CredentialsError as exc:
        print(f"ocrmesh account {ns.action}: {exc}", file=sys.stderr)
        return 1
