"""Kafka ACLs derived from the topic catalogue: each service's principal may write only the topics it
produces, read only those it consumes, and join only its own consumer groups (docs/security.md).

The broker denies whatever no ACL allows (StandardAuthorizer, `allow.everyone.if.no.acl.found=false`);
admin is its super user. aiokafka's admin client has no ACL calls, so the three requests are sent
with its protocol classes: one CreateAcls (or DeleteAcls) request carries every binding.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    DeleteAclsRequest_v1,
    DescribeAclsRequest_v1,
)
from aiokafka.protocol.api import Request

from shared.settings import DB_ROLES

SERVICES = DB_ROLES  # the Kafka principals besides admin: one per service, as deploy/stack.sh creates them
# Kafka's protocol enums (org.apache.kafka.common.acl / resource).
ANY_RESOURCE, TOPIC, GROUP = 1, 2, 3
ANY_PATTERN, LITERAL, PREFIXED = 1, 3, 4
ANY_OPERATION, READ, WRITE, DESCRIBE = 1, 3, 4, 8
ANY_PERMISSION, ALLOW = 1, 3
OPERATIONS = {READ: "READ", WRITE: "WRITE", DESCRIBE: "DESCRIBE"}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding from any host: `principal` may do `operation` on the resource."""

    resource_type: int
    name: str
    pattern: int
    principal: str
    operation: int

    def row(self) -> tuple:
        return (self.resource_type, self.name, self.pattern, self.principal, "*", self.operation, ALLOW)


def bindings(catalogue: Iterable, prefix: str) -> list[Acl]:
    """Every ACL a deployment with topic prefix `prefix` needs.

    Topics are literal names (the run's own under a test prefix). A service's consumer groups are
    all named after it (`<prefix><service>…`), so one prefixed binding covers them. The gateway may
    also DESCRIBE every topic and group: its console shows each group's lag (offsets, not contents).
    """
    found: set[Acl] = set()
    for topic in catalogue:
        name = prefix + topic.name
        for who, ops in ([(p, (WRITE, DESCRIBE)) for p in topic.producers]
                         + [(c, (READ, DESCRIBE)) for c in topic.consumers] + [("gateway", (DESCRIBE,))]):
            found |= {Acl(TOPIC, name, LITERAL, f"User:{who}", op) for op in ops}
    for service in SERVICES:
        group = prefix + service
        found |= {Acl(GROUP, group, PREFIXED, f"User:{service}", op) for op in (READ, DESCRIBE)}
        found.add(Acl(GROUP, group, PREFIXED, "User:gateway", DESCRIBE))
    return sorted(found)


class _CreateAcls(Request[CreateAclsRequest_v1]):
    API_KEY = 30

    def __init__(self, acls: list[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class([acl.row() for acl in self.acls])


class _DeleteAcls(Request[DeleteAclsRequest_v1]):
    API_KEY = 31

    def __init__(self, acls: list[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class([acl.row() for acl in self.acls])


class _DescribeAcls(Request[DescribeAclsRequest_v1]):
    API_KEY = 29

    def __init__(self, resource_type: int, name: str) -> None:
        self.resource_type, self.name = resource_type, name

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(self.resource_type, self.name, ANY_PATTERN, None, None, ANY_OPERATION, ANY_PERMISSION)


class AclError(RuntimeError):
    """The broker refused to create or delete ACLs (e.g. the client is not admin)."""


def _check(errors: Iterable[tuple[int, str | None]], what: str) -> None:
    failed = [f"{code}: {message}" for code, message in errors if code]
    if failed:
        raise AclError(f"{what}: {'; '.join(sorted(set(failed)))}")


async def grant(admin: AIOKafkaAdminClient, acls: list[Acl], timeout: float = 30) -> None:
    """Create the bindings (an existing one is left as it is), and return once every broker applies them.

    The broker answers once the controller committed them; each broker's authorizer learns them
    from the metadata log a moment later, and a client started meanwhile would be refused.
    """
    if not acls:
        return
    response = await admin._send_request(_CreateAcls(acls))  # noqa: SLF001 - no public ACL call in aiokafka
    _check(((code, msg) for code, msg in response.creation_responses), "creating Kafka ACLs")
    resources = {(a.resource_type, a.name) for a in acls if a.pattern == LITERAL}
    async with asyncio.timeout(timeout):
        for node in [b.nodeId for b in admin._client.cluster.brokers()]:  # noqa: SLF001
            for rtype, name in sorted(resources):
                while not {a for a in acls if (a.resource_type, a.name) == (rtype, name)} <= set(
                        await describe(admin, rtype, name, node)):
                    await asyncio.sleep(0.1)


async def revoke(admin: AIOKafkaAdminClient, acls: list[Acl]) -> None:
    """Delete exactly these bindings."""
    if acls:
        response = await admin._send_request(_DeleteAcls(acls))  # noqa: SLF001
        _check(((code, msg) for code, msg, *_ in response.filter_responses), "deleting Kafka ACLs")


async def revoke_prefix(admin: AIOKafkaAdminClient, prefix: str) -> list[Acl]:
    """Delete every binding on a resource named with `prefix` (a test run's, its extra prefixes included)."""
    if not prefix:
        raise ValueError("refusing to revoke ACLs without a prefix")
    doomed = [a for a in await describe(admin) if a.name.startswith(prefix)]
    await revoke(admin, doomed)
    return doomed


async def describe(admin: AIOKafkaAdminClient, resource_type: int = ANY_RESOURCE, name: str | None = None,
                   node: int | None = None) -> list[Acl]:
    """The bindings on one literal resource name (default: every binding), as broker `node` (default: any) applies them."""
    response = await admin._send_request(_DescribeAcls(resource_type, name), node)  # noqa: SLF001
    _check([(response.error_code, response.error_message)], "describing Kafka ACLs")
    return sorted(Acl(rtype, rname, pattern, principal, op)
                  for rtype, rname, pattern, rows in response.resources
                  for principal, _host, op, permission in rows if permission == ALLOW)
