"""``domainllm tenants …`` and ``domainllm keys …``: tenants and their keys, straight in Redis (the
same store the API reads, so a revocation here stops the key on every replica at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import redis
import typer
from rich.table import Table

from apps.settings import get_settings
from apps.tenants.store import DEFAULT_TENANT, TenantStore
from core.errors import DomainLLMError
from core.redis_client import connect
from domainllm.common import console, fail

T = TypeVar("T")

tenants_app = typer.Typer(help="Tenants: each holds its own keys (and, as storage is split, its own data).")
keys_app = typer.Typer(help="API keys: widget, server and admin scopes, stored hashed.")


def store() -> TenantStore:
    settings = get_settings()
    return TenantStore(connect(settings.effective_redis_url, decode=True), settings.tenancy_namespace)


def _run(action: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except DomainLLMError as exc:
        fail(f"{action}: {exc.message}")
    except redis.RedisError as exc:
        url = get_settings().effective_redis_url
        fail(
            f"{action}: Redis is not reachable at {url} ({type(exc).__name__}); start it (make run) or set DOMAINLLM_REDIS_URL"
        )


@tenants_app.command("create")
def create_tenant(
    tenant: Annotated[str, typer.Argument(help="Tenant id: lowercase letters, digits, dashes.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    origin: Annotated[
        list[str] | None, typer.Option(help="A page origin allowed to use its widget keys (repeat).")
    ] = None,
) -> None:
    """Create a tenant and print its first admin key (shown once)."""

    def run() -> None:
        s = store()
        t = s.create_tenant(tenant, name, origin or [])
        key = s.create_key(t.id, "admin", "first admin key")
        console.print(f"tenant [bold]{t.id}[/bold] created; its admin key (shown once):")
        print(key.key)

    _run("tenants create", run)


@tenants_app.command("list")
def list_tenants() -> None:
    """Every tenant, with its allowed widget origins."""

    def run() -> None:
        s = store()
        s.ensure_default()
        table = Table("tenant", "name", "origins", "keys")
        for t in s.tenants():
            table.add_row(t.id, t.name, ", ".join(t.origins) or "(any)", str(len(s.keys(t.id))))
        console.print(table)

    _run("tenants list", run)


@keys_app.command("create")
def create_key(
    scope: Annotated[str, typer.Option(help="widget, server or admin.")],
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to.")] = DEFAULT_TENANT,
    label: Annotated[str, typer.Option(help="What the key is for.")] = "",
) -> None:
    """Create a key and print it (shown once; only its hash is stored)."""
    issued = _run("keys create", lambda: store().create_key(tenant, scope, label))
    console.print(f"{issued.info.scope} key {issued.info.id} for tenant {issued.info.tenant} (shown once):")
    print(issued.key)


@keys_app.command("list")
def list_keys(tenant: Annotated[str, typer.Option(help="The tenant.")] = DEFAULT_TENANT) -> None:
    """A tenant's keys: id, scope, label, created (never the secret)."""
    keys = _run("keys list", lambda: store().keys(tenant))
    table = Table("id", "scope", "label", "hint")
    for k in keys:
        table.add_row(k.id, k.scope, k.label, k.public()["hint"])
    console.print(table)


@keys_app.command("revoke")
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke a key: it stops working at once, on every replica."""
    info = _run("keys revoke", lambda: store().revoke(key_id))
    console.print(f"revoked {info.scope} key {info.id} of tenant {info.tenant}")


@keys_app.command("rotate")
def rotate_key(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Replace a key by a new one of the same tenant and scope, and revoke the old one."""
    issued = _run("keys rotate", lambda: store().rotate(key_id))
    console.print(f"{key_id} revoked; its replacement {issued.info.id} (shown once):")
    print(issued.key)
