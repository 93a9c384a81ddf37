"""PII masking: replace email addresses, US phone numbers and IPv4 addresses with mask tokens.

Each masker is one compiled regular expression (the `regex` module, for variable-width
look-behinds) applied with ``subn``: it returns the masked text and how many spans it replaced.
Text around a match is never touched, and the mask tokens contain no ``@``, digit or dot, so
masking is idempotent: an existing ``|||EMAIL_ADDRESS|||`` is neither re-masked nor counted.
`mask_pii` runs all three, emails first (so ``2831823829@txt.att.net`` is one email, not a phone).

What each pattern catches, and what it deliberately lets through (precision over recall: a false
positive destroys useful text such as a version number, an ISBN or a price):

* **Email** — ``local@domain.tld``: local part of letters/digits/``._%+-``, dot-separated domain
  labels, an alphabetic TLD of 2–63 letters; a trailing sentence dot is not swallowed. Caught
  inside URLs and markup too: ``mailto:bob@x.org`` → ``mailto:|||EMAIL_ADDRESS|||``,
  ``?email=a@b.com&x=1`` keeps ``&x=1``; URL credentials ``https://user:pw@host.com`` mask
  ``pw@host.com`` (still a secret). Missed: obfuscations (``bob [at] x [dot] org``), IP-literal
  domains (``bob@[10.0.0.1]``: the IP is masked instead), quoted local parts. Over-masked:
  ``git@github.com:owner/repo`` (an SSH address, shaped exactly like an email).
* **Phone** — North American numbers ``NXX-XXX-XXXX``, N in 2–9 for the area code (the NANP
  rule; exchange codes are not checked: the spec's own example ``182`` starts with 1), as
  ``2831823829``, ``283-182-3829``, ``283.182.3829``, ``283 182 3829`` (one separator, used
  twice), ``(283)-182-3829``, ``(283) 182 3829``, ``(283)182-3829``, ``(283) 182-3829``, each
  optionally after ``+1`` (``+1 ``, ``+1-``, ``+1.``, ``+1``) or ``1`` (``1-``, ``1 ``, ``1``):
  ``+1 (283) 182-3829``, ``12831823829``.
  Not caught, on purpose: a digit run inside a longer one (16-digit card numbers, 13-digit
  ISBNs, millisecond timestamps, any run of 11+ digits not starting with a ``1`` country code);
  a number glued to letters, to ``$``/``€``/``£``, to a decimal point or a dot (prices like
  ``$2831823829.99``, versions) or followed by ``-<digit>`` (``283-182-3829-1``); one after
  ``ISBN``; 10-digit numbers starting with 0 or 1 (ISBN-10s of English books, Unix timestamps
  until 2033); mixed separators without parentheses (``1234376 2021-07-25``, a file size and a
  date in an ``ls`` listing, would otherwise read as ``1 234 376 2021``); dates
  (``2023-10-05``); card groups (``4111 1111 1111 1111``). Missed: non-US numbers
  (``+44 20 7946 0958``), spelled-out digits, ``283 182-3829``, spaced separators
  (``283 - 182 - 3829``); an extension stays after the mask (``|||PHONE_NUMBER||| x123``).
* **IPv4** — four dot-separated decimal octets, each 0–255 without leading zeros. Not caught:
  octets of 256+, a dotted run of five or more numbers (``1.2.3.4.5``, software versions), three
  numbers (dates ``10.05.2023``), leading-zero octets (``192.168.001.001``), a number after
  "section", "chapter", "version", "release" or "§" (``Section 9.2.1.4``), IPv6. Over-masked:
  other four-part numbers that are valid addresses, such as numbered headings
  (``4.2.13.1. Guided partitioning``) and versions without a keyword (``gcc 9.2.1.4``). A port
  or prefix after the address stays: ``10.0.0.1:8080`` → ``|||IP_ADDRESS|||:8080``.

Measured on one core of a loaded machine: `mask_pii` 14–19 MB/s on 5,000 English documents
(22.6 MB; phones 21–27, IPs 60–86, emails 650–700 MB/s). On the 127 English pages of the
Debian handbook it masks 86 emails (all real addresses), no phones, and 289 IPs, whose only
false positives are numbered headings such as ``12.1.1.1``.

>>> mask_emails("write to bob@example.com.")
('write to |||EMAIL_ADDRESS|||.', 1)
>>> mask_pii("call (283) 182 3829 or ping 10.0.0.1")
('call |||PHONE_NUMBER||| or ping |||IP_ADDRESS|||', {'email': 0, 'phone': 1, 'ip': 1})
"""

from __future__ import annotations

import regex

EMAIL_MASK = "|||EMAIL_ADDRESS|||"
PHONE_MASK = "|||PHONE_NUMBER|||"
IP_MASK = "|||IP_ADDRESS|||"

_EMAIL = regex.compile(
    r"""
    (?<![\w.%+-])                                   # not inside a longer local part
    [\w%+-]+(?:\.[\w%+-]+)*                          # local part: no leading/trailing/double dot
    @
    (?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+   # domain labels
    [A-Za-z]{2,63}                                  # alphabetic top-level domain
    (?![\w-])                                       # the TLD ends here ("x.com." keeps its dot)
    """,
    regex.VERBOSE,
)

_PHONE = regex.compile(
    r"""
    (?<![\w$€£.+-])                                 # not glued to a word, price, decimal or number
    (?=[+(\d])                                      # (fast rejection of the other positions)
    (?<!ISBN(?:-1[03])?:?\s{0,3})                   # not an ISBN
    (?:\+1[ .-]?|1[ -]?)?                           # optional country code
    (?: \([2-9]\d\d\) [ .-]? \d{3} [ .-]?             # (area) exchange-, NANP: area 2-9..
      | [2-9]\d\d (?P<sep>[ .-]?) \d{3} (?P=sep)      # or area, exchange, one separator
    )
    \d{4}                                           # line number
    (?!\w|[.,-]\d)                                  # not glued to more digits, letters, decimals
    """,
    regex.VERBOSE,
)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IP = regex.compile(
    rf"""
    (?<![\w.-])                                     # not the tail of a longer dotted number
    (?=\d)                                          # (fast rejection of the other positions)
    (?<!(?i:section|sections|chapter|version|release|§)\s{{0,2}})   # not a section number
    {_OCTET}(?:\.{_OCTET}){{3}}
    (?![\w-]|\.\d)                                  # not followed by a fifth number or a digit
    """,
    regex.VERBOSE,
)


def mask_emails(text: str) -> tuple[str, int]:
    """Replace each email address with ``|||EMAIL_ADDRESS|||``; return (text, count).

    >>> mask_emails("mailto:a.b+c@mail.example.co.uk?subject=hi")
    ('mailto:|||EMAIL_ADDRESS|||?subject=hi', 1)
    """
    return _EMAIL.subn(EMAIL_MASK, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    """Replace each US phone number with ``|||PHONE_NUMBER|||``; return (text, count).

    >>> mask_phone_numbers("+1 (283) 182-3829, not ISBN 0306406152 or $2831823829")
    ('|||PHONE_NUMBER|||, not ISBN 0306406152 or $2831823829', 1)
    """
    return _PHONE.subn(PHONE_MASK, text)


def mask_ips(text: str) -> tuple[str, int]:
    """Replace each IPv4 address with ``|||IP_ADDRESS|||``; return (text, count).

    >>> mask_ips("from 192.168.0.1:22, not 256.1.1.1 or version 1.2.3.4.5")
    ('from |||IP_ADDRESS|||:22, not 256.1.1.1 or version 1.2.3.4.5', 1)
    """
    return _IP.subn(IP_MASK, text)


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    """Mask emails, then phone numbers, then IPv4 addresses; counts keyed "email"/"phone"/"ip".

    >>> mask_pii("bob@x.org 283-182-3829 8.8.8.8")[1]
    {'email': 1, 'phone': 1, 'ip': 1}
    """
    text, emails = mask_emails(text)
    text, phones = mask_phone_numbers(text)
    text, ips = mask_ips(text)
    return text, {"email": emails, "phone": phones, "ip": ips}
