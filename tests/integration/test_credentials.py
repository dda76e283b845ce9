"""Client credentials: flag/env precedence, password sources, logging in at a real auth service."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth_svc.config import AuthConfig
from auth_svc.server import AuthInstance
from etcd.launcher import EtcdProcess
from mesh import credentials
from mesh.credentials import CredentialsError, resolve_metadata
from mesh.processes import free_port
from tests.integration.auth_fixtures import fast_config
from tests.integration.etcd_fixtures import etcd_fixture
from tests.integration.ocr_fixtures import ROOT

__all__ = ["etcd_fixture"]  # pytest fixture used below

PASSWORD = "correct horse battery"


def parse(*argv: str, etcd_flag: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    credentials.add_arguments(parser, etcd_flag=etcd_flag)
    return parser.parse_args(list(argv))


def no_prompt(text: str) -> str:
    raise AssertionError(f"unexpected prompt {text!r}")


def auth_config(tmp_path: Path, **over: object) -> AuthConfig:
    return fast_config(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}", bcrypt_concurrency=1, **over)


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[AuthInstance]:
    async with AuthInstance(auth_config(tmp_path)) as instance:
        await instance.accounts.register("alice", PASSWORD)
        yield instance


def subject(instance: AuthInstance, metadata: list[tuple[str, str]]) -> str:
    """The user name in the bearer token, verified by the auth instance's own verifier."""
    assert len(metadata) == 1 and metadata[0][0] == "authorization"
    scheme, token = metadata[0][1].split(" ", 1)
    assert scheme == "Bearer"
    return str(instance.verifier.verify(token)["name"])


async def test_token_flag_beats_the_environment_and_the_environment_is_the_fallback() -> None:
    env = {credentials.TOKEN_ENV: "from-env"}
    assert await resolve_metadata(parse("--token", "from-flag"), environ=env) == [
        ("authorization", "Bearer from-flag")
    ]
    assert await resolve_metadata(parse(), environ=env) == [("authorization", "Bearer from-env")]
    assert await resolve_metadata(parse(), environ={}) == []
    with pytest.raises(CredentialsError, match="either --token or --login"):
        await resolve_metadata(parse("--token", "t", "--login", "alice:pw"), environ={})
    with pytest.raises(CredentialsError, match="user name"):
        await resolve_metadata(parse("--login", ":pw"), environ={})


def test_login_values_and_password_sources() -> None:
    assert credentials.split_login("alice:pa:ss") == ("alice", "pa:ss")
    assert credentials.split_login("alice") == ("alice", None)
    assert credentials.split_login("alice:") == ("alice", None)
    env = {credentials.PASSWORD_ENV: "from-env"}
    assert credentials.read_password("alice", environ=env, prompt=no_prompt) == "from-env"
    assert credentials.read_password("alice", environ={}, prompt=lambda _: "typed") == "typed"
    answers = iter(["one", "two"])
    with pytest.raises(CredentialsError, match="differ"):
        credentials.read_password("alice", environ={}, prompt=lambda _: next(answers), confirm=True)

    def closed_stdin(text: str) -> str:
        raise EOFError

    with pytest.raises(CredentialsError, match=credentials.PASSWORD_ENV):
        credentials.read_password("alice", environ={}, prompt=closed_stdin)


async def test_login_flag_logs_in_with_each_password_source(auth: AuthInstance) -> None:
    target = ("--auth-target", auth.address)
    # The login flag beats a token in the environment.
    env = {credentials.TOKEN_ENV: "stale"}
    inline = await resolve_metadata(
        parse("--login", f"alice:{PASSWORD}", *target), environ=env, prompt=no_prompt
    )
    assert subject(auth, inline) == "alice"
    env = {credentials.PASSWORD_ENV: PASSWORD}
    from_env = await resolve_metadata(parse("--login", "alice", *target), environ=env, prompt=no_prompt)
    assert subject(auth, from_env) == "alice"
    prompted: list[str] = []

    def prompt(text: str) -> str:
        prompted.append(text)
        return PASSWORD

    typed = await resolve_metadata(parse("--login", "ALICE:", *target), environ={}, prompt=prompt)
    assert subject(auth, typed) == "alice" and prompted == ["password for ALICE: "]

    with pytest.raises(CredentialsError, match="login as 'alice' failed"):
        await resolve_metadata(parse("--login", "alice:wrong-password", *target), environ={})


async def test_login_tries_the_next_target_and_explains_unreachable(auth: AuthInstance) -> None:
    dead = f"127.0.0.1:{free_port()}"
    reply = await credentials.login([dead, auth.address], "alice", PASSWORD, timeout=5)
    assert reply.user.username == "alice"
    with pytest.raises(CredentialsError, match="cannot reach an auth service"):
        await credentials.login([dead], "alice", PASSWORD, timeout=5)


async def test_login_discovers_the_auth_service_in_etcd(tmp_path: Path, etcd: EtcdProcess) -> None:
    args = ("--login", f"alice:{PASSWORD}", "--etcd", etcd.endpoint)
    with pytest.raises(CredentialsError, match="no auth service is registered"):
        await resolve_metadata(parse(*args, etcd_flag=True), environ={})
    async with AuthInstance(auth_config(tmp_path, etcd=etcd.endpoint)) as instance:
        await instance.accounts.register("alice", PASSWORD)
        metadata = await resolve_metadata(parse(*args, etcd_flag=True), environ={})
        assert subject(instance, metadata) == "alice"


async def _cli(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *argv,
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal: a password prompt reads the empty stdin
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_account_commands_register_login_whoami(auth: AuthInstance) -> None:
    env = {credentials.PASSWORD_ENV: "bobs password", credentials.TOKEN_ENV: ""}
    base = ("account", "--auth-target", auth.address)
    rc, _, err = await _cli(*base, "register", "bob", env=env)
    assert rc == 0 and "registered bob" in err, err
    rc, _, err = await _cli(*base, "register", "bob", env=env)
    assert rc == 1 and "taken" in err
    rc, out, err = await _cli(*base, "login", "bob", env=env)
    assert rc == 0, err
    token = out.strip()
    assert auth.verifier.verify(token)["name"] == "bob"
    rc, out, err = await _cli(*base, "whoami", env={credentials.TOKEN_ENV: token})
    assert rc == 0 and out.startswith("bob "), err
    rc, _, err = await _cli(
        *base, "login", "bob", env={credentials.PASSWORD_ENV: "", credentials.TOKEN_ENV: ""}
    )
    assert rc == 1 and credentials.PASSWORD_ENV in err  # no password source: a clear error, no hang
