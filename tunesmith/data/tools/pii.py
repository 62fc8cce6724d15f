"""Find and redact personal data in training text: typed placeholders, counts per type, never the value.

Detected (each with a validity check where one exists, so plain numbers survive):

==================  ================================================================  ===================
type                what                                                              check
==================  ================================================================  ===================
URL_CREDENTIALS     ``scheme://user:pass@host``, ``scheme://token@host`` (host kept)   —
EMAIL               ``name@domain.tld``                                                —
IBAN                ``DE89 3704 0044 0532 0130 00``, grouped or compact               ISO 13616 mod-97
CREDIT_CARD         13–19 digits, compact or in groups of 4 (Amex 4-6-5)              Luhn
NATIONAL_ID         US SSN ``ddd-dd-dddd`` (no 000/666/9xx area), UK NINO             SSA / HMRC rules
IP                  IPv4 and IPv6 addresses                                           ``ipaddress``
PHONE               ``+CC ...`` international, NANP ``(415) 555-2671``, ``0``-trunk   7–15 digits
                    national (``020 7946 0958``, ``01 23 45 67 89``)
NAME (optional)     person names, only when spaCy and a model are installed           NER
==================  ================================================================  ===================

Detectors run in the order above over the original text; a span claimed by an earlier one is not looked at
again. A 13–19 digit card-shaped number that fails Luhn is *kept* and shields its digits from the phone
detector, so an order number is neither a card nor a phone. Years (``2023``), prices (``$1,299.99``) and
ranges (``1999-2005``) match no pattern::

    redact_text("mail bob@example.com, card 4111 1111 1111 1111")
    # ('mail [EMAIL], card [CREDIT_CARD]', Counter({'EMAIL': 1, 'CREDIT_CARD': 1}))
    redact_file("train.jsonl", "train.redacted.jsonl")   # report with counts per type
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.tools.stream import transform_file
from tunesmith.data.tools.textfields import map_text

PLACEHOLDERS: dict[str, str] = {
    "URL_CREDENTIALS": "[URL_CREDENTIALS]",
    "EMAIL": "[EMAIL]",
    "IBAN": "[IBAN]",
    "CREDIT_CARD": "[CREDIT_CARD]",
    "NATIONAL_ID": "[NATIONAL_ID]",
    "IP": "[IP]",
    "PHONE": "[PHONE]",
    "NAME": "[NAME]",
}

Span = tuple[int, int]


@dataclass(frozen=True)
class Detector:
    """One PII type: a candidate pattern and a check that returns the span to redact (or None to keep).

    ``shields`` marks a rejected candidate's span as checked-and-clean so later detectors skip it: an
    IBAN-shaped string with a bad checksum is not re-read as a card, a non-Luhn card number not as a phone.
    """

    kind: str
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], Span | None]
    shields: bool = False


def _whole(m: re.Match[str]) -> Span:
    return m.span()


# --- validity checks ------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Luhn (mod-10) checksum used by every payment card number."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: first four characters moved to the end, letters as 10..35, the number mod 97 is 1."""
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _card(m: re.Match[str]) -> Span | None:
    digits = re.sub(r"\D", "", m.group())
    return m.span() if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _iban(m: re.Match[str]) -> Span | None:
    # A grouped IBAN pattern can swallow a following word of 4 capitals or digits; retry shorter prefixes
    # ending at a group boundary until the checksum holds.
    text, start = m.group(), m.start()
    ends = [len(text)] + [i for i in range(len(text) - 1, 14, -1) if text[i] == " "]
    for end in ends:
        if iban_valid(text[:end]):
            return (start, start + end)
    return None


def _ssn(m: re.Match[str]) -> Span | None:
    area, group, serial = m.group(1), m.group(2), m.group(3)
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return m.span()


def _ip(m: re.Match[str]) -> Span | None:
    text = m.group()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    # "dead::beef" or "::" parse as IPv6 but in prose they are code or emphasis, not addresses.
    if ":" in text and (not any(c.isdigit() for c in text) or sum(1 for g in text.split(":") if g) < 2):
        return None
    return m.span()


def _phone(m: re.Match[str]) -> Span | None:
    # "+44 20 7946 0958 2023" matches as one 16-digit run; give back trailing groups until it is a phone.
    text, start = m.group(), m.start()
    for end in [len(text)] + [i for i in range(len(text) - 1, 0, -1) if text[i] in " .-"]:
        digits = sum(c.isdigit() for c in text[:end])
        if digits <= 15:
            return (start, start + end) if digits >= 7 else None
    return None


def _url_credentials(m: re.Match[str]) -> Span | None:
    return m.span("cred")


# --- patterns -------------------------------------------------------------------------------------------

_NUM_LEFT = r"(?<![\w+.\-/])"  # not inside a longer number, word, decimal, path or phone
_NUM_RIGHT = r"(?![\w\-/]|[.,]\d)"

# Any userinfo counts: "https://TOKEN@host" leaks a token as surely as "user:pass@" leaks a password.
_URL_CRED_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://(?P<cred>[^\s/@?#]+)@")
_EMAIL_RE = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@(?:[A-Za-z0-9\-]+\.)+[A-Za-z]{2,}\b")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
_CARD_RE = re.compile(
    _NUM_LEFT
    # compact 13-19 digits | 4-4-4-(1..4)[-(1..3)] | Amex/Diners 4-6-5 / 4-6-4: always 13-19 digits
    + r"(?:\d{13,19}|\d{4}(?:[ \-]\d{4}){2}[ \-]\d{1,4}(?:[ \-]\d{1,3})?|\d{4}[ \-]\d{6}[ \-]\d{4,5})"
    + _NUM_RIGHT
)
_SSN_RE = re.compile(_NUM_LEFT + r"(\d{3})-(\d{2})-(\d{4})" + _NUM_RIGHT)
# UK National Insurance number: HMRC excludes D F I Q U V (and O second), and the prefixes below.
_NINO_RE = re.compile(
    r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)
_PHONE_RE = re.compile(
    r"(?<![\w+\-])(?:"
    # international: +CC then 2-6 groups, optional (0) / (area)
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,6}"
    # NANP: (415) 555-2671, 415-555-2671, 415.555.2671 (one separator kind, so '100 200 3000' is not a phone)
    r"|\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}"
    r"|\d{3}([.\-])\d{3}\1\d{4}"
    # trunk-prefix national: 020 7946 0958, 07700 900123, 030 1234567 (not times like 0900-1700)
    r"|0\d{2,4}[ \-](?:\d{3,4}[ \-]?\d{3,4}|\d{6,8})"
    # French style: 01 23 45 67 89
    r"|0\d(?:[ .]\d{2}){4}"
    r")" + _NUM_RIGHT
)

DETECTORS: tuple[Detector, ...] = (
    Detector("URL_CREDENTIALS", _URL_CRED_RE, _url_credentials),
    Detector("EMAIL", _EMAIL_RE, _whole),
    Detector("IBAN", _IBAN_RE, _iban, shields=True),
    Detector("CREDIT_CARD", _CARD_RE, _card, shields=True),
    Detector("NATIONAL_ID", _SSN_RE, _ssn),
    Detector("NATIONAL_ID", _NINO_RE, _whole),
    Detector("IP", _IPV4_RE, _ip),
    Detector("IP", _IPV6_RE, _ip),
    Detector("PHONE", _PHONE_RE, _phone),
)

# Every pattern needs one of these characters; text without any is skipped cheaply (most rows).
_TRIGGER_RE = re.compile(r"[\d@]|::")


def _overlaps(span: Span, taken: list[Span]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)


def find_pii(text: str) -> list[tuple[str, int, int]]:
    """Locate personal data in ``text``.

    Args:
        text: Any string.

    Returns:
        ``(kind, start, end)`` triples sorted by position, non-overlapping.
    """
    if not _TRIGGER_RE.search(text):
        return []
    found: list[tuple[str, int, int]] = []
    taken: list[Span] = []
    for det in DETECTORS:
        for m in det.pattern.finditer(text):
            if _overlaps(m.span(), taken):
                continue
            span = det.check(m)
            if span is not None:
                found.append((det.kind, *span))
                taken.append(m.span())
            elif det.shields:
                taken.append(m.span())
    return sorted(found, key=lambda f: f[1])


class NameRedactor:
    """Person-name redaction through spaCy NER, used only when spaCy and a model are importable.

    tunesmith does not depend on spaCy: when it is missing, :attr:`available` is False and :attr:`reason`
    says why, so reports can state that names were *not* redacted instead of implying they were.
    """

    def __init__(self, model: str = "en_core_web_sm") -> None:
        self.model = model
        self.reason = ""
        self._nlp: Any = None
        try:
            import spacy  # optional: only used when the user installed it
        except ImportError:
            self.reason = (
                "spaCy is not installed (pip install spacy && python -m spacy download en_core_web_sm)"
            )
            return
        try:
            self._nlp = spacy.load(model)
        except OSError as err:
            self.reason = f"spaCy model {model!r} is not installed ({err})"

    @property
    def available(self) -> bool:
        return self._nlp is not None

    def find(self, text: str) -> list[Span]:
        """Spans of PERSON entities (empty when unavailable)."""
        if self._nlp is None:
            return []
        return [(ent.start_char, ent.end_char) for ent in self._nlp(text).ents if ent.label_ == "PERSON"]


def redact_text(text: str, names: NameRedactor | None = None) -> tuple[str, Counter[str]]:
    """Replace each piece of personal data with its typed placeholder.

    Args:
        text: Any string.
        names: Optional name redactor; names are looked for after the pattern types, in the remaining text.

    Returns:
        The redacted text and the number of replacements per type.
    """
    found = find_pii(text)
    if names is not None and names.available:
        taken = [(s, e) for _, s, e in found]
        found += [("NAME", s, e) for s, e in names.find(text) if not _overlaps((s, e), taken)]
        found.sort(key=lambda f: f[1])
    counts: Counter[str] = Counter()
    if not found:
        return text, counts
    parts: list[str] = []
    pos = 0
    for kind, start, end in found:
        parts.append(text[pos:start])
        parts.append(PLACEHOLDERS[kind])
        counts[kind] += 1
        pos = end
    parts.append(text[pos:])
    return "".join(parts), counts


class _RedactStep:
    """Row step for :func:`transform_file`: redacts every text field, tallies occurrences per type."""

    def __init__(self, names: NameRedactor | None) -> None:
        self.names = names
        self.occurrences: Counter[str] = Counter()

    def __call__(self, row: dict[str, Any], line: int) -> tuple[dict[str, Any], list[str]]:
        row_counts: Counter[str] = Counter()

        def redact(text: str) -> str:
            new, counts = redact_text(text, self.names)
            row_counts.update(counts)
            return new

        new_row = map_text(row, redact)
        self.occurrences.update(row_counts)
        return new_row, sorted(row_counts)  # reasons: the types found in this row, once each


def redact_file(
    src: str | Path,
    dst: str | Path,
    *,
    names: bool = False,
    name_model: str = "en_core_web_sm",
    on_bad_row: str = "stop",
) -> dict[str, Any]:
    """Write a copy of ``src`` with personal data replaced by placeholders.

    Args:
        src: Input data file (never modified).
        dst: Output JSONL path.
        names: Also redact person names, if spaCy and ``name_model`` are installed.
        name_model: spaCy model used for names.
        on_bad_row: ``stop`` at an unreadable row (``path:line``), or ``skip`` and count it (``bad_rows``).

    Returns:
        The :func:`transform_file` report; ``changed`` counts *rows* per type, ``details.occurrences``
        counts replacements per type, and ``details.names`` says whether names were redacted and, if not, why.
    """
    redactor = NameRedactor(name_model) if names else None
    step = _RedactStep(redactor)

    def details() -> dict[str, Any]:
        if redactor is None:
            name_status = "not requested"
        elif redactor.available:
            name_status = f"redacted with spaCy model {name_model}"
        else:
            name_status = f"unavailable: {redactor.reason}"
        return {"occurrences": dict(sorted(step.occurrences.items())), "names": name_status}

    return transform_file(src, dst, step, name="pii", details=details, on_bad_row=on_bad_row)
