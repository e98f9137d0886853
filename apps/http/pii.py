"""Masking personal data out of support text before it is stored or logged.

``mask_pii`` replaces, in this order (an earlier kind wins where two could claim the same digits):

    [EMAIL]    addresses like jane.doe+shop@example.co.uk
    [IP]       IPv4 (each part 0-255) and IPv6 addresses
    [SSN]      US social security numbers 123-45-6789, or 9 digits after "SSN"/"social security"
    [NINO]     UK National Insurance numbers (QQ 12 34 56 C)
    [CVV]      3-4 digits after "CVV", "CVC", "security code"
    [DOB]      a date after "born", "DOB", "date of birth", "birthday"
    [CARD]     four groups of four digits split by spaces, dashes, dots, slashes or underscores, even
               when a typo breaks the Luhn check
    [ACCOUNT]  IBANs that pass the mod-97 check (GB82 WEST 1234 5698 7654 32)
    [CARD]     13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check
    [ACCOUNT]  8-17 digits after a word such as "account", "acct", "routing"; UK sort codes
    [PHONE]    +CC international forms, US (555) 123-4567 / 555-123-4567, UK 020 7946 0958
    [ACCOUNT]  any other bare run of 10-17 digits (a 10-11 digit one shaped like a phone is [PHONE]),
               unless it follows a reference word ("order", "tracking", "invoice", ...)

What stays: years, prices ($1,299.00), dates, order and ticket references (#12345, order #A1234,
"order 123456789012"), tracking codes mixing letters and digits (1Z999AA10123456784). The checksums
(Luhn, mod-97) and the minimum lengths are what keep false positives low: a 4-9 digit number on its
own is never masked. ``PiiLogFilter`` applies the same masking to log records.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import quote, unquote

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
ACCOUNT = "[ACCOUNT]"
IP = "[IP]"
SSN = "[SSN]"
NINO = "[NINO]"
CVV = "[CVV]"
DOB = "[DOB]"

_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]\w)"
)
_IPV6_RE = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){0,6}[0-9A-Fa-f]{1,4}(?![\w:])"
)
_SSN_RE = re.compile(r"(?<![\w\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])")
_SSN_WORD_RE = re.compile(
    r"(?P<lead>\b(?:ssn|social security(?: number| no\.?)?)\s*(?:is\s+|:\s*|#\s*)?)(?P<num>\d{3}[ \-]?\d{2}[ \-]?\d{4})\b",
    re.IGNORECASE,
)
_NINO_RE = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])",
    re.IGNORECASE,
)
_CVV_RE = re.compile(
    r"(?P<lead>\b(?:cvv2?|cvc2?|csc|cid|security code|card code)\s*(?:is\s+|:\s*|=\s*|#\s*)?)(?P<num>\d{3,4})\b",
    re.IGNORECASE,
)
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (
    r"(?:\d{1,2}[./\- ]\d{1,2}[./\- ]\d{2,4}|\d{4}[./\-]\d{1,2}[./\-]\d{1,2}"
    r"|\d{1,2}(?:st|nd|rd|th)? " + _MONTHS + r",? \d{4}|" + _MONTHS + r" \d{1,2}(?:st|nd|rd|th)?,? \d{4})"
)
_DOB_RE = re.compile(
    r"(?P<lead>\b(?:born(?: on)?|dob|d\.o\.b\.?|date of birth|birth ?date|birthday)\s*(?:is\s+|:\s*|=\s*)?)(?P<num>"
    + _DATE
    + r")",
    re.IGNORECASE,
)
_GROUPED_CARD_RE = re.compile(
    r"(?<![\w.])(?<!\d[ .\-_/])\d{4}(?P<sep>[ .\-_/])\d{4}(?P=sep)\d{4}(?P=sep)\d{4}(?:(?P=sep)\d{1,3})?(?![\w]|[ .\-_/]\d)"
)

_EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# digits "glued" to these are part of something else: a word, a reference (#), money or a decimal
_NOT_AFTER = r"(?<![\w#$€£¥.,/+\-])"
_NOT_BEFORE = r"(?![\w]|[.,/]\d)"

# Candidates are matched generously, then cut back at a separator until a prefix validates: "GB82
# WEST 1234 5698 7654 32 OK" must still find the IBAN before " OK".
_IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]){11,32}")
# possessive: a card is a whole run of digit groups, never the start of a longer one (a USPS code)
_CARD_RE = re.compile(_NOT_AFTER + r"\d(?:[ \-]?\d)*+(?![\w])")
_INTL_PHONE_RE = re.compile(r"(?<![\w+])\+\d(?:[ .\-]?(?:\d|\(\d{1,5}\))){1,24}")

_ACCOUNT_WORDS = r"(?:account|acct|a/c|acc|routing|checking|savings)"
_KEYWORD_ACCOUNT_RE = re.compile(
    r"(?P<lead>\b" + _ACCOUNT_WORDS + r"\.?(?:\s*(?:number|num|no\.?|nr|id|#))?\s*(?:is\s+|:\s*|=\s*|#\s*)?)"
    r"(?P<num>\d(?:[ \-]?\d){7,16})" + _NOT_BEFORE,
    re.IGNORECASE,
)
_SORT_CODE_RE = re.compile(
    r"(?P<lead>\bsort\s*code\s*(?:is\s+|:\s*)?)(?P<num>\d{2}[ \-]?\d{2}[ \-]?\d{2})\b", re.IGNORECASE
)
_US_PHONE_RE = re.compile(_NOT_AFTER + r"(?:1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}" + _NOT_BEFORE)
_UK_PHONE_RE = re.compile(_NOT_AFTER + r"(?:\(0\d{2,4}\)|0\d{2,4})[ \-]?\d{3,4}[ \-]?\d{3,4}" + _NOT_BEFORE)
_BARE_NUMBER_RE = re.compile(_NOT_AFTER + r"\d{10,17}" + _NOT_BEFORE)
# a number right after one of these is a reference the agent needs, not personal data
_REFERENCE_BEFORE_RE = re.compile(
    r"\b(?:order|orders|tracking|track|invoice|ticket|ref|reference|case|shipment|parcel|package|"
    r"confirmation|booking|sku|item|model|serial|return|rma)"
    r"(?:\s*(?:number|num|no\.?|id|code|#))?\s*(?:is\s+|:\s*|#\s*)?$",
    re.IGNORECASE,
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """ISO 13616 mod-97: move the first four characters to the end, letters to 10..35, remainder 1."""
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _card(m: re.Match[str]) -> str:
    """Real cards are printed contiguous or as 4-4-4-4, 4-6-5, 4-4-4-4-3: groups of 3-6 digits
    starting with four. That rule keeps two dates (2024-05-01 2024-06-01) from passing as one."""
    groups = re.split(r"[ \-]", m.group())
    digits = "".join(groups)
    grouped_like_a_card = len(groups) == 1 or (len(groups[0]) == 4 and all(3 <= len(g) <= 6 for g in groups))
    return CARD if 13 <= len(digits) <= 19 and grouped_like_a_card and luhn_valid(digits) else m.group()


def _iban(candidate: str) -> bool:
    return iban_valid(candidate.replace(" ", "").replace("-", ""))


def _intl_phone(candidate: str) -> bool:
    return 8 <= len(_digits(candidate)) <= 15  # E.164 allows at most 15 digits


def _replace_validated(pattern: re.Pattern[str], text: str, token: str, valid: Callable[[str], bool]) -> str:
    """Replace the longest prefix of each match that validates and ends at a separator or at the
    match end (where the next character must not be a letter or digit)."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        start, end = m.span()
        cuts = [end] if end == len(text) or not text[end].isalnum() else []
        cuts += [i for i in range(end - 1, start, -1) if text[i] in " -.(" and text[i - 1] not in " -.("]
        for cut in cuts:
            candidate = text[start:cut].rstrip(" -.(")
            if valid(candidate):
                out.append(text[pos:start])
                out.append(token)
                pos = start + len(candidate)
                break
    out.append(text[pos:])
    return "".join(out)


def _follows_reference(m: re.Match[str]) -> bool:
    return _REFERENCE_BEFORE_RE.search(m.string[max(0, m.start() - 40) : m.start()]) is not None


def _mask_lead(m: re.Match[str]) -> str:
    return m.group("lead") + ACCOUNT


def _mask_bare(m: re.Match[str]) -> str:
    if _follows_reference(m):
        return m.group()
    digits = m.group()
    phone_like = (len(digits) == 10 and digits[0] in "23456789") or (len(digits) == 11 and digits[0] in "01")
    return PHONE if phone_like else ACCOUNT


def _uk_phone(m: re.Match[str]) -> str:
    digits = _digits(m.group())
    if len(digits) not in (10, 11) or digits[1] == "0":
        return m.group()
    if digits == m.group() and _follows_reference(m):  # "order 01234567890": a reference, not a phone
        return m.group()
    return PHONE


def mask_pii(text: str) -> str:
    """``text`` with the personal data listed in the module docstring replaced by its token."""
    if not text:
        return text
    text = _EMAIL_RE.sub(EMAIL, text)
    if not any(c.isdigit() for c in text):
        return text  # everything below needs digits
    text = _IPV4_RE.sub(IP, text)
    text = _IPV6_RE.sub(IP, text)
    text = _DOB_RE.sub(lambda m: m.group("lead") + DOB, text)
    text = _CVV_RE.sub(lambda m: m.group("lead") + CVV, text)
    text = _SSN_WORD_RE.sub(lambda m: m.group("lead") + SSN, text)
    text = _SSN_RE.sub(SSN, text)
    text = _NINO_RE.sub(NINO, text)
    text = _GROUPED_CARD_RE.sub(CARD, text)
    text = _replace_validated(_IBAN_RE, text, ACCOUNT, _iban)
    text = _CARD_RE.sub(_card, text)
    text = _KEYWORD_ACCOUNT_RE.sub(_mask_lead, text)
    text = _SORT_CODE_RE.sub(_mask_lead, text)
    text = _replace_validated(_INTL_PHONE_RE, text, PHONE, _intl_phone)
    text = _US_PHONE_RE.sub(PHONE, text)
    text = _UK_PHONE_RE.sub(_uk_phone, text)
    return _BARE_NUMBER_RE.sub(_mask_bare, text)


MASKED_ATTR = "_pii_masked"  # set on a record once masked: a second handler's filter or formatter skips it


class PiiLogFilter(logging.Filter):
    """Masks each record's message (with its args merged in) and any formatted traceback, so user
    text that reaches a log line leaves no personal data there. Attach it to a handler (to cover
    every logger that propagates to it) or to a logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, MASKED_ATTR, False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # args that do not fit the format: keep both, masked
            message = f"{record.msg} {record.args!r}"
        record.msg = mask_pii(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_pii(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info)
        setattr(record, MASKED_ATTR, True)
        return True


_USER_PATH_RE = re.compile(r"^(/v1/recommend/)(?!stats$|events|items|feedback)[^/?]+")


def _mask_segment(segment: str) -> str:
    """One path segment as the client sent it (percent-encoded: ``jane%40example.com``), masked in its
    decoded form. The masker leaves a number glued to a ``/`` alone (a date, a fraction); in a path the
    slash only separates, so each segment is masked on its own. A masked segment is encoded again:
    a client cannot write a line break into the log."""
    decoded = unquote(segment)
    masked = mask_pii(decoded)
    return segment if masked == decoded else quote(masked, safe="[]")


class AccessLogFilter(logging.Filter):
    """uvicorn's access log (its own handler, which the root filter never sees): the client's IP,
    query strings (search terms, user ids) and the user id in a recommendation path are dropped, the
    rest masked segment by segment. Its record args are (client, method, path, http version, status),
    and its formatter unpacks them, so they stay a 5-tuple."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            _client, method, path, version, status = args
            path = _USER_PATH_RE.sub(r"\1{user}", str(path).split("?", 1)[0])
            record.args = ("-", method, "/".join(_mask_segment(part) for part in path.split("/")), version, status)
        return True


# loggers that write through their own handlers (propagate off), besides the root's
OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.worker", "celery.app.trace")


def mask_pii_in_logs() -> None:
    """Mask personal data in every log line: the root handlers, the loggers with their own handlers
    (uvicorn, Celery), logging's last resort (a warning with no handler to go to, as under uvicorn's
    default config, which gives the root none) and uvicorn's access log (with ``AccessLogFilter``)."""
    handlers = [h for name in ("", *OWN_HANDLER_LOGGERS) for h in logging.getLogger(name).handlers]
    for handler in [*handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, PiiLogFilter) for f in handler.filters):
            handler.addFilter(PiiLogFilter())
    for handler in logging.getLogger("uvicorn.access").handlers:
        if not any(isinstance(f, AccessLogFilter) for f in handler.filters):
            handler.addFilter(AccessLogFilter())
