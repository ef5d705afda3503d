"""The Merkle tree against RFC 9162's own recursive algorithms and published test vectors."""
from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.merkle import (
    EMPTY_ROOT, Frontier, consistency_ranges, hashes_of, inclusion_ranges, leaf_hash, node_hash, nodes_for,
    verify_consistency, verify_inclusion,
)


# --- RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1, transcribed recursively (the reference) -------

def mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def stored(leaves: list[bytes]) -> tuple[dict, Frontier]:
    """Grow a tree the way the log does and keep every stored subtree hash."""
    hashes, frontier = {}, Frontier()
    for data in leaves:
        hashes.update(frontier.append(leaf_hash(data)))
    return hashes, frontier


def inclusion(index: int, size: int, hashes: dict) -> list[bytes]:
    ranges = inclusion_ranges(index, size)
    return hashes_of(ranges, {n: hashes[n] for n in nodes_for(ranges)})


def consistency(first: int, second: int, hashes: dict) -> list[bytes]:
    return hashes_of(consistency_ranges(first, second), hashes)


leaf_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaf_lists, st.data())
def test_proofs_equal_the_rfc_algorithms_and_verify(leaves, data):
    hashes, frontier = stored(leaves)
    n = len(leaves)
    assert frontier.root() == mth(leaves)
    m = data.draw(st.integers(1, n), label="first")
    i = data.draw(st.integers(0, m - 1), label="index")
    root_m = mth(leaves[:m])
    proof = inclusion(i, m, hashes)
    assert proof == path(i, leaves[:m])
    assert verify_inclusion(i, m, leaf_hash(leaves[i]), proof, root_m)
    cproof = consistency(m, n, hashes)
    assert cproof == subproof(m, leaves, True)
    assert verify_consistency(m, n, root_m, mth(leaves), cproof)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 40), st.data())
def test_every_inclusion_and_consistency_proof_verifies_exhaustively(n, data):
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    hashes, _ = stored(leaves)
    roots = [mth(leaves[:m]) for m in range(n + 1)]
    for m in range(1, n + 1):
        for i in range(m):
            assert verify_inclusion(i, m, leaf_hash(leaves[i]), inclusion(i, m, hashes), roots[m])
        assert verify_consistency(m, n, roots[m], roots[n], consistency(m, n, hashes))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=2, max_size=70, unique=True), st.data())
def test_a_changed_proof_or_claim_never_verifies(leaves, data):
    hashes, frontier = stored(leaves)
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = inclusion(i, n, hashes)
    root = frontier.root()
    leaf = leaf_hash(leaves[i])
    assert not verify_inclusion(i, n, leaf_hash(leaves[i] + b"x"), proof, root)
    # (A wrong tree size is not caught by the root alone: RFC 9162 roots do not commit to the
    # size, which is why checkpoints sign the size beside the root.)
    assert not verify_inclusion(i, n, leaf, proof + [root], root)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        bad = [p if k != j else bytes(32) for k, p in enumerate(proof)]
        assert not verify_inclusion(i, n, leaf, bad, root)
        assert not verify_inclusion(i, n, leaf, proof[:-1], root)
    other = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    assert not verify_inclusion(other, n, leaf, proof, root)
    m = data.draw(st.integers(1, n - 1))
    cproof = consistency(m, n, hashes)
    old = mth(leaves[:m])
    assert not verify_consistency(m, n, old, node_hash(root, root), cproof)
    assert not verify_consistency(m, n, node_hash(old, old), root, cproof)
    assert not verify_consistency(m, n, old, root, cproof[:-1])
    assert not verify_consistency(m, n, old, root, cproof + [root])


def test_requests_outside_the_tree_are_refused():
    with pytest.raises(ValueError, match="not in a tree of 4"):
        inclusion_ranges(4, 4)
    with pytest.raises(ValueError, match="no consistency proof from 5 to 4"):
        consistency_ranges(5, 4)
    with pytest.raises(ValueError, match="no consistency proof from 0"):
        consistency_ranges(0, 4)
    with pytest.raises(ValueError, match="3 leaves has 2 edge subtrees, not 1"):
        Frontier(3, [bytes(32)])
    assert Frontier().root() == EMPTY_ROOT == mth([])


# --- published vectors ----------------------------------------------------------------------
# RFC 6962 test data used by Certificate Transparency's implementations
# (github.com/transparency-dev/merkle, testonly/constants.go and proof/verify_test.go).

def h(x: str) -> bytes:
    return bytes.fromhex(x)


CT_LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                             "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [h(x) for x in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_INCLUSION = [  # (leaf index, tree size, proof); the source lists 1-based leaves
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def test_certificate_transparency_vectors():
    hashes, _ = stored(CT_LEAVES)
    for size in range(9):
        f = Frontier()
        for leaf in CT_LEAVES[:size]:
            f.append(leaf_hash(leaf))
        assert f.root() == CT_ROOTS[size]
    for index, size, proof in CT_INCLUSION:
        assert inclusion(index, size, hashes) == [h(p) for p in proof]
        assert verify_inclusion(index, size, leaf_hash(CT_LEAVES[index]), [h(p) for p in proof], CT_ROOTS[size])
    for first, second, proof in CT_CONSISTENCY:
        assert consistency(first, second, hashes) == [h(p) for p in proof]
        assert verify_consistency(first, second, CT_ROOTS[first], CT_ROOTS[second], [h(p) for p in proof])


def test_ct_vectors_of_a_single_entry_and_of_bad_probes():
    # transparency-dev/merkle TestVerifyInclusionSingleEntry and TestVerifyInclusion probes
    leaf = leaf_hash(b"data")
    assert verify_inclusion(0, 1, leaf, [], leaf)
    assert not verify_inclusion(0, 1, b"", [], leaf) and not verify_inclusion(0, 1, leaf, [], b"")
    some = h("abacaba000000000000000000000000000000000000000000060061e00123456")
    for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
        assert not verify_inclusion(index, size, some, [], EMPTY_ROOT)
    assert not verify_consistency(0, 0, b"1", b"2", [])
    assert not verify_consistency(1, 1, b"1", b"2", [])
    assert not verify_consistency(1, 2, b"1", b"2", [])  # an empty proof never shows growth


# A real Certificate Transparency log (Google Argon 2020): the responses kept as test data in
# golang.org/x/mod/sumdb/tlog (testdata/argon2020, used by TestCertificateTransparency).
ARGON_SIZE, ARGON_ROOT = 961984013, "dwlueapdd7LaOEnX2W2Wp9v2XE+KzejHRQGHwEx0oaM="
ARGON_LEAF_INDEX = 10000
ARGON_LEAF_INPUT = (
    "AAAAAAFelPhqUwAAAAViMIIFXjCCBEagAwIBAgIRAOodHzZdqWIFzYyl/SovhCMwDQYJKoZIhvcNAQELBQAwgZAxCzAJBgNVBAYTAkdC"
    "MRswGQYDVQQIExJHcmVhdGVyIE1hbmNoZXN0ZXIxEDAOBgNVBAcTB1NhbGZvcmQxGjAYBgNVBAoTEUNPTU9ETyBDQSBMaW1pdGVkMTYw"
    "NAYDVQQDEy1DT01PRE8gUlNBIERvbWFpbiBWYWxpZGF0aW9uIFNlY3VyZSBTZXJ2ZXIgQ0EwHhcNMTcwMjE1MDAwMDAwWhcNMjAwNDE2"
    "MjM1OTU5WjBfMSEwHwYDVQQLExhEb21haW4gQ29udHJvbCBWYWxpZGF0ZWQxHTAbBgNVBAsTFFBvc2l0aXZlU1NMIFdpbGRjYXJkMRsw"
    "GQYDVQQDDBIqLmxhbmRsb3Jkcy5jb20uYXUwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCtPBKKHj4zdrGlCjgTHzb5gx9J"
    "Cs97DwvBz60f14gDufF2haWbOxyJ0a3opAMsZnOr8HkARVCwxdqG/PTfACcb0QM7FOlzvxGqxataTYiChwvkkif8F9GlJw69HuHgzhus"
    "Pf1Ytfk3ps1PRC14MkyrS4kwPrk/Le4XdkqRpRw62wG4V6IkbzsNMEOl1H8EgUbfyapdOcVxHjIzvBVy56fBRKG05Fr5wNq3Acak5kYZ"
    "dNsLhhmlrqAfAjiombW3hb3V5blJdRC0BDdYHv2+zKey6LqJ1FDoXo6IzbzPpC+aifZy47YX+/N1U64Qn5xlDg7mOP8JXfkNJHbU1TJZ"
    "Hif5AgMBAAGjggHhMIIB3TAfBgNVHSMEGDAWgBSQr2o6lFoL2JDqElZz30O0Oija5zAdBgNVHQ4EFgQUNQSLjkoz01I+iuuoC5lgEp0a"
    "nhcwDgYDVR0PAQH/BAQDAgWgMAwGA1UdEwEB/wQCMAAwHQYDVR0lBBYwFAYIKwYBBQUHAwEGCCsGAQUFBwMCME8GA1UdIARIMEYwOgYL"
    "KwYBBAGyMQECAgcwKzApBggrBgEFBQcCARYdaHR0cHM6Ly9zZWN1cmUuY29tb2RvLmNvbS9DUFMwCAYGZ4EMAQIBMFQGA1UdHwRNMEsw"
    "SaBHoEWGQ2h0dHA6Ly9jcmwuY29tb2RvY2EuY29tL0NPTU9ET1JTQURvbWFpblZhbGlkYXRpb25TZWN1cmVTZXJ2ZXJDQS5jcmwwgYUG"
    "CCsGAQUFBwEBBHkwdzBPBggrBgEFBQcwAoZDaHR0cDovL2NydC5jb21vZG9jYS5jb20vQ09NT0RPUlNBRG9tYWluVmFsaWRhdGlvblNl"
    "Y3VyZVNlcnZlckNBLmNydDAkBggrBgEFBQcwAYYYaHR0cDovL29jc3AuY29tb2RvY2EuY29tMC8GA1UdEQQoMCaCEioubGFuZGxvcmRz"
    "LmNvbS5hdYIQbGFuZGxvcmRzLmNvbS5hdTANBgkqhkiG9w0BAQsFAAOCAQEACyHqxUzrexToY7tOv4+kyGPP2D27P1tQpyzeAl1bPObi"
    "MhNK2b9vvBLDWAaqm8c0YL1h+DBdLoWzf3xFsIkTCVCjWJTNSNlcYtgRk6or1s7jWsfXzWqsnPjPPmTIOCw7EfH7Yme3oxPs3UUsmShA"
    "gPwNohAtL9GqlqMiKM6v1WU3NHt01jEoNP23LRa6KeNK6AH6WHJykzL223IlhgXjHTeuQj6lR+TNrQXJuhwTXYe+20rrpPQxc1Pn7Aqn"
    "vfWgmicRQ7gdIcr4V6+ecTvLfNOaJ0ZYe5G5giuAAdTm7F57pk04f4gyZNYKrj88mvbkoriN8b6jcWExtrYO6bm2TwAA"
)
ARGON_AUDIT_PATH = """T46AmJsuOM/gFiGlUp+IJJebp+1Z5qratFNW7U0JyOQ= 9Jj1Feodn42uRYEfffkV4HF/EIPFQ5Zo9IwkxbQ2uhk=
D53/1oCNebF4J59HHgioovKZxrmrKcVuCVhy3Izg8Ck= wSFDgGSrsXRPA+1c8WHoAFCsWeUv8NDyP/Q/SgsyVyY=
516/RcwsgdwdzHn18v1dJHqBkgFUbNhmCIWOGjsMJaE= naTFY2ajLFgrgs5XUl+zJYZnnlJksLGsA1VYwpLfqbY=
mKBRJo6qao+0Kdh/rhGkZUbHUAxMhrtrclrTpIbNjIg= Co4ueOFE7lpifLio94irxxsv1wFMMaK3tPu2ZQkHlro=
yRgy800K6JMYCC05sWfqF2kvCg2riT/pVM+nEa6V5+0= n2O38XJZC8/Wpbwi9HhgVizlUyeUHVZvYyQB1607MRc=
go3tAjuNfNSCj87y2Rg1xOroDknGN1eaf3cgvzObf7Q= 8D0Mj3/J7ySSnFb0afIHYXv6rlOhECnsebY6XKi1IR8=
6rcez46ZU8M5vPiWVMAUfJfAOV0pPP/mch/lYzZhj/M= 2rtIeXrPvSdUyHc5maIgSAVB2BzaKaupWxSAiVayDE4=
nniW/IMFQPN5xw8UsHFn7CRStYbm1gLu7NNa6kkRqJQ= mRPPi7sQS22MduIEyvcNzCNFqIt6kLwYPkNKrVtIcu8=
JvTivzESNS9wHI8aph5a7uieVmtS/p9PciMZ5D6GyOo= UTyQd+Ym0wY4zG+qK806bBORwi1CSVvFQ/KknnqoZj8=
hXODrqN+ff+U6zPqRQ+ZQKs6im1fPcxIerDSfNwflhE= II6GE+WY/DrpZzfHztLwkR46o37zVkNLCyPYlf68zA0=
d609kWWcNBllbA8Jb/ad4XAVVGnScLRmtP8FYyr+Dck= rikBsP0G0gioXRpBFED2CzQdSLrGPvRd0bEcbEZw1rI=
GXIElfmnRuWfbA4z7ubV/UwlpSRUbUeec7oL5HDDnh0= pR0SH/NYP6s9+8azWwaeUXA4Ze/3WCIgMfh5YW6wvcE=
f3GuAKYVrF8RBg3s15jvA/YvV9oAliWtzP/imwPhQVA= WHn8zDxlVgkV+lSlmzaOdfSBrTHoRr5nT3d76q0KKWE=
f2uV2ZxVgULzLPKuZcowRY3ZY7fRlX59iDBjV1R8kNQ= NzQVjJsvQwbi7WStMr9oFkh9VbHfK7LB6o7WwAqwNTs=
C0LttBeYHZHgL+032JIcJC3CTBIyza/hsbmJUgJfmDI= nixU5CWTFVDlF4BGdcU6kA7WSYurEpe9jRWc+F/7sOc="""
ARGON_OLD_SIZE, ARGON_OLD_ROOT = 3654490, "AuIZ5V6sDUj1vn3Y1K85oOaQ7y+FJJKtyRTl1edIKBQ="
ARGON_CONSISTENCY = """80Sfbj6UQEdVSZCSIgh9NMPj3vCBzcc1A48B2crJSWg= FZcrgAHUk6nNPviJZq8kEK6jCG1d18pJOFE45ZDc1TQ=
Q67reWXmPBo1UfmwBap4Xi9PMPfFdUSSw3WGlRZdG7k= eJ7CyhR4PxzBxDIsWgrVYW1eFUb9ndgf46tFmiqVrxA=
QrDwp062Grm5WY8KdrhFsBuuNjGzRox2Jb8PmVL5OYw= XM4YMjMEdLH/XJam/ZWyaP14k3cmsOtnPsOWQ54lW1s=
SGiBh+jOTGccXU48ZzgQ88lRcBmtB4wz4oSDndv2QTg= WAS6txqNLYKGL1GdBdpqmV42TTfn6cJsuDsqLXuTCNI=
QFmRS0rirUA7ZN3lxFjDncV+E1OCrn3NUB4RCp+5fzc= Hdbp7It2XBNZmNDBpCN/KPd7vfVqxgzwOosqVIaEA9E=
mxvHL0ZiblBdD7j7pIa1jlfB0gSqfJ6oX0UGo7L0VsU= q5hjyvoW6TL/PThgcitpDcSTrnKX2p1+aqscqH2euRA=
jTOWDqt3IHj2NVFeezyBz2ofpru+ztEywqKUAfFclKI= GIRn0w3HqJdvU9j1WVD//eR6lk2AaTVjyzjsJNP8U88=
x52GJvxG81fnQBrgOTbll1A5tz95/LXK0Ag1NhB0r1I= 6/0OqrcTgc3o5dD5PymmoC96lB9yLPFuTHVvLy8fSGk=
Gf+iKLfcXO5l4JEFmsZvSdG5q1uEeWPfYLrds6pmjz0= DGuaco+McyM3AfRSF6qX7RwSetwe2ieYJmxw5e9rVx0=
2tQJ9V32hnYp+fdpP6TcjmgJmLeNVOMKM0Ml1kk4cNU= 3PapK+IkyJr8I9yAErAmzuZezzLMzsg+PfeRCgNW8NQ=
s6xiYeejb+wtqHA+URJZ2I/SCPyIW8coP6aB00FJbMY= z9lSpmdTcr5M5ZzKlc4EPh3SrSypKFdk6JUF/UccaZU=
GXIElfmnRuWfbA4z7ubV/UwlpSRUbUeec7oL5HDDnh0= pR0SH/NYP6s9+8azWwaeUXA4Ze/3WCIgMfh5YW6wvcE=
f3GuAKYVrF8RBg3s15jvA/YvV9oAliWtzP/imwPhQVA= WHn8zDxlVgkV+lSlmzaOdfSBrTHoRr5nT3d76q0KKWE=
f2uV2ZxVgULzLPKuZcowRY3ZY7fRlX59iDBjV1R8kNQ= NzQVjJsvQwbi7WStMr9oFkh9VbHfK7LB6o7WwAqwNTs=
C0LttBeYHZHgL+032JIcJC3CTBIyza/hsbmJUgJfmDI= nixU5CWTFVDlF4BGdcU6kA7WSYurEpe9jRWc+F/7sOc="""


def b64s(text: str) -> list[bytes]:
    return [base64.b64decode(x) for x in text.split()]


def test_a_real_certificate_transparency_log():
    root = base64.b64decode(ARGON_ROOT)
    leaf = leaf_hash(base64.b64decode(ARGON_LEAF_INPUT))
    proof = b64s(ARGON_AUDIT_PATH)
    assert verify_inclusion(ARGON_LEAF_INDEX, ARGON_SIZE, leaf, proof, root)
    assert not verify_inclusion(ARGON_LEAF_INDEX + 1, ARGON_SIZE, leaf, proof, root)
    old = base64.b64decode(ARGON_OLD_ROOT)
    cproof = b64s(ARGON_CONSISTENCY)
    assert verify_consistency(ARGON_OLD_SIZE, ARGON_SIZE, old, root, cproof)
    assert not verify_consistency(ARGON_OLD_SIZE + 1, ARGON_SIZE, old, root, cproof)
    # The generation side asks for exactly as many hashes as the real log returned.
    assert len(inclusion_ranges(ARGON_LEAF_INDEX, ARGON_SIZE)) == len(proof)
    assert len(consistency_ranges(ARGON_OLD_SIZE, ARGON_SIZE)) == len(cproof)
