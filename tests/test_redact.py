"""Unit tests of PII redaction (e-mail, phone, card, IP, custom rules, user id hashing)."""

from __future__ import annotations

import pytest

from driftloop.ingest.redact import BUILTIN_PATTERNS, Redactor, luhn_ok
from driftloop.settings import PiiRule, PiiSettings


@pytest.fixture(scope="module")
def r() -> Redactor:
    return Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail a.b@example.com now", "mail [email] now"),
        ("john.doe+tag@mail.example.co.uk.", "[email]."),
        ("<ADMIN@Example.ORG>", "<[email]>"),
        ("two: x@y.io,z_q@w-v.net", "two: [email],[email]"),
        ("mailto:ops@corp.io?subject=hi", "mailto:[email]?subject=hi"),
    ],
)
def test_email(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize("text", ["user@localhost", "a @ b.com", "@handle", "foo@bar"])
def test_not_email(r: Redactor, text: str) -> None:
    assert r.text(text) == text


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415-555-0132",
        "(415) 555-0132",
        "+1 (415) 555-0132",
        "+44 20 7946 0958",
        "+33 1 23 45 67 89",
        "4155550132",
        "+14155550132",
        "415-555-0132",
        "415.555.0132",
        "1-415-555-0132",
        "0044 20 7946 0958",
        "+49 151 23456789",
    ],
)
@pytest.mark.parametrize(("before", "after"), [("call ", " today"), ("", ""), ("tel:", "."), ("(", ")")])
def test_phone(r: Redactor, phone: str, before: str, after: str) -> None:
    out = r.text(before + phone + after)
    assert out == before + "[phone]" + after
    assert not any(ch.isdigit() for ch in out)


CARDS = ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500 0000 0000 0004", "3782 822463 10005"]


@pytest.mark.parametrize("card", CARDS)
def test_luhn_valid_card_redacted(r: Redactor, card: str) -> None:
    assert luhn_ok("".join(ch for ch in card if ch.isdigit()))
    assert r.text(f"card {card}, thanks") == "card [credit_card], thanks"
    assert r.text(f"{card}.") == "[credit_card]."


@pytest.mark.parametrize(
    "digits", ["4111 1111 1111 1112", "1234-5678-9012-3456", "12345678901234567890123", "9999999999999999"]
)
def test_luhn_invalid_digit_runs_kept(r: Redactor, digits: str) -> None:
    assert not luhn_ok("".join(ch for ch in digits if ch.isdigit()))
    text = f"order {digits} shipped"
    assert r.text(text) == text


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 192.168.1.20 ok", "from [ip_address] ok"),
        ("server is 10.0.0.1.", "server is [ip_address]."),
        ("hosts 8.8.8.8, 1.1.1.1", "hosts [ip_address], [ip_address]"),
        ("at 255.255.255.255:8080", "at [ip_address]:8080"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 up", "v6 [ip_address] up"),
        ("v6 2001:db8::8a2e:370:7334 up", "v6 [ip_address] up"),
        ("[2001:db8:0:1::42]:443", "[[ip_address]]:443"),
        ("ll fe80::1ff:fe23:4567:890a.", "ll [ip_address]."),
    ],
)
def test_ip_addresses(r: Redactor, text: str, expected: str) -> None:
    assert r.text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3 released",
        "python 3.11.4 and numpy 1.26.4",
        "on 2024-05-01 at 10:30",
        "at 10:30:45 UTC",
        "2024-05-01T10:30:00Z",
        "dated 01.05.2024",
        "pi is 3.14159265358979",
        "x[1::2] and std::vector<int> and a::b",
        "256.1.1.1 is not an address",
        "order #12345 of 3 items",
        "ratio 1:2:3:4:5:6",
        "",
    ],
)
def test_non_pii_kept(r: Redactor, text: str) -> None:
    assert r.text(text) == text


def test_none_and_empty(r: Redactor) -> None:
    assert r.text(None) is None
    assert r.text("") == ""


def test_mixed_text(r: Redactor) -> None:
    text = "I'm bob@x.io, call +1 415-555-0132 from 10.1.2.3 with card 4111 1111 1111 1111 on 2024-05-01 (v1.2.3)"
    assert r.text(text) == (
        "I'm [email], call [phone] from [ip_address] with card [credit_card] on 2024-05-01 (v1.2.3)"
    )


def test_long_text_all_occurrences() -> None:
    r = Redactor()
    chunk = "lorem ipsum 2024-05-01 dolor a@b.io sit 415-555-0132 amet 1.2.3 "
    out = r.text(chunk * 50)
    assert out == "lorem ipsum 2024-05-01 dolor [email] sit [phone] amet 1.2.3 " * 50


def test_builtin_subset_and_replacement() -> None:
    r = Redactor(builtin=("email",), replacement="<{name} removed>")
    assert r.text("a@b.io 415-555-0132 10.0.0.1") == "<email removed> 415-555-0132 10.0.0.1"
    only_ip = Redactor(builtin=("ip_address",))
    assert only_ip.text("a@b.io 10.0.0.1 2001:db8::1:2") == "a@b.io [ip_address] [ip_address]"
    none = Redactor(builtin=())
    assert none.text("a@b.io 415-555-0132") == "a@b.io 415-555-0132"


def test_unknown_builtin_rejected() -> None:
    with pytest.raises(ValueError, match="ssn"):
        Redactor(builtin=("email", "ssn"))
    assert set(BUILTIN_PATTERNS) == {"email", "phone", "credit_card", "ip_address"}


def test_custom_rules() -> None:
    r = Redactor(custom=[("employee_id", r"\bEMP-\d{5}\b", None), ("secret", r"sk-[A-Za-z0-9]{8,}", "***")])
    assert r.text("EMP-12345 used sk-abcdefgh12 and EMP-1") == "[employee_id] used *** and EMP-1"


def test_disabled_redaction_keeps_text_but_still_hashes() -> None:
    r = Redactor(enabled=False, custom=[("x", "secret", None)])
    text = "a@b.io 415-555-0132 4111 1111 1111 1111 secret"
    assert r.text(text) == text
    assert r.user_hash("u") == Redactor().user_hash("u")


def test_user_hash_stable_and_salted() -> None:
    a1, a2, b = Redactor(user_id_salt="s1"), Redactor(user_id_salt="s1"), Redactor(user_id_salt="s2")
    h = a1.user_hash("user-7")
    assert h is not None and len(h) == 64 and int(h, 16) >= 0
    assert h == a2.user_hash("user-7")
    assert h != b.user_hash("user-7")
    assert h != a1.user_hash("user-8")
    assert "user-7" not in h
    assert a1.user_hash(None) is None
    assert a1.user_hash("\ud800") != a1.user_hash("")  # lone surrogates hash, they do not crash


def test_from_settings() -> None:
    pii = PiiSettings(
        builtin=["email"],
        custom=[PiiRule(name="ticket", pattern=r"T-\d+")],
        replacement="<{name}>",
        user_id_salt="pepper",
        enabled=True,
    )
    r = Redactor.from_settings(pii)
    assert r.text("a@b.io T-99 415-555-0132") == "<email> <ticket> 415-555-0132"
    assert r.user_hash("u") == Redactor(user_id_salt="pepper").user_hash("u")
