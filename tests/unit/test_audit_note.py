"""C2SP signed notes and checkpoints against the vectors of Go's golang.org/x/mod/sumdb/note and tlog."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.checkpoint import (
    Checkpoint, NoteError, SignerKey, VerifierKey, key_id, open_checkpoint, open_note, sign_note,
)
from shared.merkle import leaf_hash

# sumdb/note/note_test.go: TestNewVerifier, TestNewSigner, TestSign, TestOpen
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"


def test_go_keys_parse_and_print_back():
    vkey = VerifierKey.parse(PETER_VKEY)
    assert (vkey.name, vkey.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert str(vkey) == PETER_VKEY
    skey = SignerKey.parse(PETER_SKEY)
    assert str(skey) == PETER_SKEY and str(skey.verifier) == PETER_VKEY
    assert key_id("PeterNeumann", vkey.public_key).hex() == "c74f20a3"


@pytest.mark.parametrize("good,parse", [(PETER_VKEY, VerifierKey.parse), (PETER_SKEY, SignerKey.parse)])
def test_every_mangled_key_is_refused(good, parse):
    """As Go's TestNewVerifier/TestNewSigner: every proper substring and every one-byte change fails."""
    b = good.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(NoteError):
                    parse(b[i:j].decode())
    for i in range(len(b)):
        mangled = b[:i] + bytes([b[i] + 1]) + b[i + 1:]
        with pytest.raises(NoteError):
            parse(mangled.decode())


def test_signing_matches_go_byte_for_byte():
    assert sign_note(TEXT, SignerKey.parse(PETER_SKEY)) == TEXT + "\n" + PETER_SIG


def test_open_finds_the_known_key_among_several_signatures():
    note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(note, VerifierKey.parse(PETER_VKEY)) == TEXT
    assert open_note(note, VerifierKey.parse(ENOCH_VKEY)) == TEXT
    with pytest.raises(NoteError, match="not signed by EnochRoot"):
        open_note(TEXT + "\n" + PETER_SIG, VerifierKey.parse(ENOCH_VKEY))
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann"):
        open_note(TEXT.replace("answer", "answers") + "\n" + PETER_SIG, VerifierKey.parse(PETER_VKEY))


@pytest.mark.parametrize("bad", [
    TEXT + PETER_SIG,  # no blank line
    TEXT + "\n" + PETER_SIG.rstrip("\n"),  # no final newline
    TEXT + "\n" + PETER_SIG.replace("—", "-"),
    TEXT + "\n" + PETER_SIG.replace("x08go", "x08g*"),
    "bell\a\n\n" + PETER_SIG,
    TEXT + "\n" + PETER_SIG * 101,
])
def test_malformed_notes_are_refused(bad):
    with pytest.raises(NoteError):
        open_note(bad, VerifierKey.parse(PETER_VKEY))


# sumdb/tlog/note_test.go TestFormatTree/TestParseTree: the go.sum database's checkpoint body.
GO_TREE = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"


def test_go_tree_vector():
    cp = Checkpoint.parse(GO_TREE)
    assert (cp.origin, cp.size, cp.root) == ("go.sum database tree", 123456789012, leaf_hash(b"hello world"))
    assert cp.text() == GO_TREE
    for bad in ("go.sum database tree\n0xabcdef\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
                "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n",
                "go.sum database tree\n123456789012\n", "\n1\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


@given(st.text(st.characters(min_codepoint=0x21, blacklist_characters="+", blacklist_categories=("Cs",)),
               min_size=1, max_size=30),
       st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32),
       st.lists(st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), min_size=1, max_size=20),
                max_size=3))
def test_checkpoints_round_trip_through_a_signed_note(origin, size, root, extensions):
    origin = "".join(c for c in origin if not c.isspace()) or "o"
    key = SignerKey.generate(origin)
    cp = Checkpoint(origin, size, root, tuple(extensions))
    note = sign_note(cp.text(), key)
    assert open_checkpoint(note, key.verifier) == cp
    with pytest.raises(NoteError):
        open_checkpoint(note, SignerKey.generate(origin).verifier)


def test_text_that_is_not_utf8_is_refused():
    with pytest.raises(NoteError, match="UTF-8"):
        sign_note("origin\ud800\n1\n" + "A" * 43 + "=\n", SignerKey.generate("o"))
    with pytest.raises(NoteError, match="key name"):
        SignerKey.generate("bad\ud800name")


def test_a_checkpoint_for_another_origin_is_refused():
    key = SignerKey.generate("blonet-kg/audit")
    note = sign_note(Checkpoint("blonet-uz/audit", 1, bytes(32)).text(), key)
    with pytest.raises(NoteError, match="origin 'blonet-uz/audit', expected 'blonet-kg/audit'"):
        open_checkpoint(note, key.verifier)
