"""The ACLs derived from the topic catalogue: least privilege, by topic and by group."""
from __future__ import annotations

from shared import acls, topics


def test_each_principal_writes_only_what_it_produces_and_reads_only_what_it_consumes():
    found = acls.bindings(topics.CATALOGUE, "p.")
    for topic in topics.CATALOGUE:
        on = {(a.principal.removeprefix("User:"), a.operation) for a in found
              if (a.resource_type, a.name, a.pattern) == (acls.TOPIC, f"p.{topic.name}", acls.LITERAL)}
        assert {who for who, op in on if op == acls.WRITE} == set(topic.producers), topic.name
        assert {who for who, op in on if op == acls.READ} == set(topic.consumers), topic.name
        assert {who for who, op in on if op == acls.DESCRIBE} == {*topic.producers, *topic.consumers, "gateway"}
    assert all(a.name.startswith("p.") and a.principal != "User:admin" for a in found)
    assert {a.operation for a in found} == {acls.READ, acls.WRITE, acls.DESCRIBE}  # never ALL, ALTER, DELETE, CREATE


def test_a_service_joins_only_groups_named_after_it():
    groups = [a for a in acls.bindings(topics.CATALOGUE, "p.") if a.resource_type == acls.GROUP]
    assert all(a.pattern == acls.PREFIXED for a in groups)
    for service in acls.SERVICES:
        mine = {a.operation for a in groups if a.principal == f"User:{service}" and a.name == f"p.{service}"}
        assert acls.READ in mine, service
        assert not [a for a in groups if a.principal == f"User:{service}" and a.operation == acls.READ
                    and a.name != f"p.{service}"], service
    # The console's lag figures: the gateway may describe (not join) every service's groups.
    assert {a.name for a in groups if a.principal == "User:gateway" and a.operation == acls.DESCRIBE} == {
        f"p.{s}" for s in acls.SERVICES}
