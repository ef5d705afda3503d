"""The notifier's egress rule (services/notifier/egress.py), pure: which hosts and addresses a send may reach."""
from __future__ import annotations

import pytest

from services.notifier.channels import one_line
from services.notifier.egress import allow_list, check, refusal
from shared.settings import Settings

LOCAL = ["127.0.0.1"]


@pytest.mark.parametrize("host, addresses, what", [
    ("10.1.2.3", ["10.1.2.3"], "private"),
    ("192.168.0.1", ["192.168.0.1"], "private"),
    ("169.254.169.254", ["169.254.169.254"], "link-local"),
    ("::ffff:169.254.169.254", ["::ffff:169.254.169.254"], "link-local"),
    ("::1", ["::1"], "loopback"),
    ("127.0.0.2", ["127.0.0.2"], "loopback"),
    ("0.0.0.0", ["0.0.0.0"], "unspecified"),
    ("100.64.0.1", ["100.64.0.1"], "non-public"),
    ("localhost", ["127.0.0.1"], "loopback"),  # listed address, unlisted name
    ("agency.example", ["93.184.216.34", "10.0.0.5"], "private"),  # one internal answer is enough
])
def test_internal_addresses_are_refused_unless_listed(host, addresses, what):
    reason = refusal(host, addresses, LOCAL)
    assert reason and f"is a {what} address not on the allow-list" in reason


def test_the_host_as_written_and_every_address_must_both_be_listed():
    assert refusal("127.0.0.1", ["127.0.0.1"], LOCAL) is None
    assert refusal("localhost", ["127.0.0.1"], ["localhost", "127.0.0.1"]) is None
    assert refusal("localhost", ["127.0.0.1"], ["localhost"]), "a name alone does not list its addresses"
    assert refusal("inbox", ["172.18.0.4"], ["inbox", "172.18.0.0/16"]) is None  # a network entry
    assert refusal("inbox", ["172.18.0.4"], ["172.18.0.0/16"]), "nor an address its names"
    assert refusal("agency.example", ["93.184.216.34"], []) is None, "public addresses need no listing"


def test_the_default_allow_list_is_loopback_for_development_only():
    assert allow_list(Settings(environment="test")) == ["127.0.0.1"]
    assert allow_list(Settings(environment="test", egress_allow_list=["10.0.0.0/8"])) == ["10.0.0.0/8"]
    production = Settings.model_construct(environment="production", egress_allow_list=None)
    assert allow_list(production) == []


def test_header_text_is_one_line():
    assert one_line("Border closed\r\nBcc: x@y.example\x00\tnow") == "Border closed Bcc: x@y.example now"


@pytest.mark.parametrize("url, refused", [
    ("https://10.1.2.3/hook", "10.1.2.3 is a private address"),
    ("https://[::ffff:169.254.169.254]/x", "is a link-local address"),
    ("https://2852039166/x", "2852039166 resolves to 169.254.169.254"),  # decimal, no lookup needed
    ("https://0xA9FEA9FE/x", "resolves to 169.254.169.254"),
    ("http://127.0.0.1:8100/hook", None),  # listed
    ("http://localhost:8100/hook", None),  # a name: the session's GuardedResolver checks what it resolves to
    ("https://agency.example/hook", None),
])
def test_addresses_written_in_the_url_are_checked_before_any_connection(url, refused):
    reason = check(url, LOCAL)
    assert (reason is None) if refused is None else (refused in reason), reason
