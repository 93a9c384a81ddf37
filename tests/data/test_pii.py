"""PII masking: the spec's formats are masked, look-alikes are not, and nothing else changes."""

from __future__ import annotations

import random

import pytest

from lmforge.data.pii import (
    EMAIL_MASK,
    IP_MASK,
    PHONE_MASK,
    mask_emails,
    mask_ips,
    mask_phone_numbers,
    mask_pii,
)

E, P, IP = EMAIL_MASK, PHONE_MASK, IP_MASK


@pytest.mark.parametrize(
    "text, expected",
    [
        ("contact bob@example.com today", f"contact {E} today"),
        ("bob@example.com.", f"{E}."),  # the sentence dot is not part of the TLD
        ("first.last+tag@mail.example.co.uk", E),
        ("<a href='mailto:bob@example.com'>mail</a>", f"<a href='mailto:{E}'>mail</a>"),
        ("https://x.com/form?email=a@b.com&next=1", f"https://x.com/form?email={E}&next=1"),
        ("(jane_doe@uni.edu)", f"({E})"),
        ("2831823829@txt.att.net", E),
    ],
)
def test_emails_are_masked_in_place(text: str, expected: str) -> None:
    assert mask_emails(text) == (expected, 1)


@pytest.mark.parametrize(
    "text",
    [
        "follow @user on the site",
        "https://medium.com/@user/my-post",
        "a..b@x.com is not an address",  # a double dot is not a valid local part
        "x@y.c",  # one-letter TLD
        "joe@localhost",  # no dot in the domain
        "an @ sign alone",
    ],
)
def test_email_look_alikes_are_kept(text: str) -> None:
    assert mask_emails(text) == (text, 0)


@pytest.mark.parametrize(
    "phone",
    [
        "2831823829", "(283)-182-3829", "(283) 182 3829", "283-182-3829",  # the spec's four
        "283.182.3829", "283 182 3829", "(283)182-3829", "+1 283 182 3829", "+1-283-182-3829",
        "+1.283.182.3829", "+12831823829", "1-283-182-3829", "12831823829",
        "+1 (283) 182-3829", "(283) 182-3829", "1 (283) 182-3829",
    ],
)
def test_us_phone_formats_are_masked(phone: str) -> None:
    assert mask_phone_numbers(f"call {phone} now") == (f"call {P} now", 1)
    assert mask_phone_numbers(f"tel:{phone}.") == (f"tel:{P}.", 1)


@pytest.mark.parametrize(
    "text",
    [
        "ISBN 978-3-16-148410-0",
        "ISBN: 2831823829",  # an ISBN-10 that would otherwise look like a phone
        "ISBN-10 2831823829",
        "0306406152",  # ISBN-10 of an English book: area codes never start with 0 or 1
        "9783161484100",  # ISBN-13
        "1696512896",  # a Unix timestamp
        "1696512896123",  # a millisecond timestamp
        "2023-10-05 12:34:56",
        "12/05/2023",
        "4111 1111 1111 1111",  # card-like groups of four
        "4532-7153-3790-1241",
        "4111111111111111",  # 16 digits
        "28318238291234567",  # a long digit run
        "$2831823829",
        "2831823829.99",
        "2831823829,50 EUR",
        "version 2.831.823.829",
        "1.2831823829",
        "abc2831823829",
        "order 2831823829x",
        "283-182-38291",
        "2831823 829",
        "192.168.100.200",
        "-rwxr-xr-x root/root   1234376 2021-07-25 20:43 ./bin/bash",  # size + date in ls -l
        "283-182-3829-1",  # part of a longer hyphenated number
    ],
)
def test_phone_look_alikes_are_kept(text: str) -> None:
    assert mask_phone_numbers(text) == (text, 0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ping 8.8.8.8 now", f"ping {IP} now"),
        ("0.0.0.0 and 255.255.255.255", f"{IP} and {IP}"),
        ("host 10.0.0.1.", f"host {IP}."),
        ("10.0.0.1:8080", f"{IP}:8080"),
        ("10.0.0.0/24", f"{IP}/24"),
        ("1.2.3.4,5.6.7.8", f"{IP},{IP}"),
    ],
)
def test_ipv4_addresses_are_masked(text: str, expected: str) -> None:
    assert mask_ips(text)[0] == expected
    assert mask_ips(text)[1] == expected.count(IP)


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1", "1.2.3.256", "999.999.999.999", "300.168.0.1",  # octets over 255
        "version 1.2.3.4.5",  # part of a longer dotted number
        "0.1.2.3.4", "v1.2.3.4",
        "10.05.2023", "2023.10.05",  # dates
        "Chrome 120.0.6099.109",
        "192.168.001.001",  # leading zeros are not taken (documented)
        "see Section 9.2.1.4, “Creating Encrypted Tunnels”",  # section numbers
        "sections\u00a011.7.3.3", "§ 1.2.3.4", "Version 10.0.0.1", "release 4.2.13.1",
    ],
)
def test_ip_look_alikes_are_kept(text: str) -> None:
    assert mask_ips(text) == (text, 0)


def test_existing_masks_are_not_remasked_or_counted() -> None:
    text = "mail bob@x.org, call 283-182-3829, ssh 10.1.2.3"
    masked, counts = mask_pii(text)
    assert masked == f"mail {E}, call {P}, ssh {IP}"
    assert counts == {"email": 1, "phone": 1, "ip": 1}
    assert mask_pii(masked) == (masked, {"email": 0, "phone": 0, "ip": 0})


def test_email_wins_over_the_digits_inside_it() -> None:
    assert mask_pii("2831823829@txt.att.net or 1.2.3.4") == (
        f"{E} or {IP}", {"email": 1, "phone": 0, "ip": 1}
    )
    assert mask_pii("root@[10.0.0.1]")[0] == f"root@[{IP}]"  # an IP-literal domain: IP masked


def test_surrounding_text_is_untouched_in_a_random_mix() -> None:
    """Build text from known pieces; the masked text must be the pieces with masks in place."""
    rng = random.Random(0)
    filler = ["the", "cat,", "sat (on)", "page 12", "in 2023.", "émigré", "—", "\ttab", "\n"]
    pii = [("ann@corp.io", E, "email"), ("(283) 182 3829", P, "phone"),
           ("172.16.254.1", IP, "ip"), ("+1 283 182 3829", P, "phone")]
    pieces, expected, counts = [], [], {"email": 0, "phone": 0, "ip": 0}
    for _ in range(300):
        if rng.random() < 0.2:
            raw, mask, kind = rng.choice(pii)
            pieces.append(raw)
            expected.append(mask)
            counts[kind] += 1
        else:
            word = rng.choice(filler)
            pieces.append(word)
            expected.append(word)
    text, want = " ".join(pieces), " ".join(expected)
    assert mask_pii(text) == (want, counts)


def test_empty_text() -> None:
    assert mask_pii("") == ("", {"email": 0, "phone": 0, "ip": 0})
