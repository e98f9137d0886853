"""PII masking: what must be masked, what must stay (references, years, prices, tracking codes),
the checksums behind cards and IBANs, and the log filter."""

from __future__ import annotations

import io
import logging
import time

import pytest

from apps.http.pii import PiiLogFilter, iban_valid, luhn_valid, mask_pii

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+shop@example.co.uk please", "write to [EMAIL] please"),
        ("Mail: J_Smith@Mail.Example.COM.", "Mail: [EMAIL]."),
        # phones: international, US, UK
        ("call +44 20 7946 0958 today", "call [PHONE] today"),
        ("call +1 (555) 123-4567", "call [PHONE]"),
        ("whatsapp +447700900123", "whatsapp [PHONE]"),
        ("+33 1 23 45 67 89 is my number", "[PHONE] is my number"),
        ("ring (555) 123-4567 or 555-123-4567", "ring [PHONE] or [PHONE]"),
        ("555.123.4567 and 1-800-555-0199", "[PHONE] and [PHONE]"),
        ("UK: 020 7946 0958, mobile 07700 900123", "UK: [PHONE], mobile [PHONE]"),
        ("office (0161) 496 0000", "office [PHONE]"),
        ("call me on 5551234567", "call me on [PHONE]"),
        # cards: Visa, Mastercard, Amex layouts, all Luhn-valid
        ("card 4111 1111 1111 1111 exp 12/27", "card [CARD] exp 12/27"),
        ("card 5555-5555-5555-4444", "card [CARD]"),
        ("card 4111111111111111", "card [CARD]"),
        ("amex 3782 822463 10005", "amex [CARD]"),
        # IBANs (mod-97) and account numbers
        ("IBAN GB82 WEST 1234 5698 7654 32 OK?", "IBAN [ACCOUNT] OK?"),
        ("to DE89370400440532013000.", "to [ACCOUNT]."),
        ("account number 12345678", "account number [ACCOUNT]"),
        ("my acct: 0012-3456-7890", "my acct: [ACCOUNT]"),
        ("Account no. 987654321 please", "Account no. [ACCOUNT] please"),
        ("sort code 12-34-56", "sort code [ACCOUNT]"),
        ("the number 123456789012345 on my statement", "the number [ACCOUNT] on my statement"),
        # issue 15's kinds: SSNs, NI numbers, dotted or mistyped cards, CVVs, dates of birth, IPs
        ("my ssn is 123-45-6789", "my ssn is [SSN]"),
        ("SSN: 123456789", "SSN: [SSN]"),
        ("NI number AB 12 34 56 C thanks", "NI number [NINO] thanks"),
        ("ni AB123456C", "ni [NINO]"),
        ("card 4111.1111.1111.1111", "card [CARD]"),
        ("card 4111 1111 1111 1112 (one digit off)", "card [CARD] (one digit off)"),
        ("cvv 123", "cvv [CVV]"),
        ("the security code is 9876", "the security code is [CVV]"),
        ("born on 12/03/1985", "born on [DOB]"),
        ("DOB: 1985-03-12", "DOB: [DOB]"),
        ("date of birth 3rd March 1985", "date of birth [DOB]"),
        ("from 192.168.1.20 today", "from [IP] today"),
        ("ip 2001:db8:85a3::8a2e:370:7334", "ip [IP]"),
        # several kinds in one message
        (
            "I'm jo@x.io, card 4111 1111 1111 1111, phone 555-123-4567",
            "I'm [EMAIL], card [CARD], phone [PHONE]",
        ),
    ],
)
def test_personal_data_is_masked(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Where is order #A1234?",
        "order #12345 from 2024",
        "It cost $1,299.00 in 2023 and €12.50 in 2024",
        "tracking 1Z999AA10123456784",
        "tracking number 9400111899223100012345",
        "USPS 9400 1000 0000 0000 0000 00",
        "order 123456789012 still not here",
        "invoice no. 0123456789",
        "delivered 2024-05-01 or 2024-06-01, at 10:30",
        "version 1.2.3 released",
        "20% off 3 items, model XJ-9000, postcode SW1A 1AA",
        "card ending in 4242",
        "not a card: 4111 1111 1111",  # three groups
        "not an IBAN: GB82 WEST 1234 5698 7654 33",  # fails mod-97
        "C++ 2024 gave +5 points and +12 345",
        "account 1234",  # too short to be an account number
        "no PII at all",
        "",
    ],
)
def test_references_years_prices_and_codes_are_not_masked(text: str) -> None:
    assert mask_pii(text) == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82WEST12345698765433") and not iban_valid("GB82")


def test_an_iban_is_found_before_trailing_uppercase_words() -> None:
    assert mask_pii("pay GB82 WEST 1234 5698 7654 32 OK THANKS") == "pay [ACCOUNT] OK THANKS"
    assert mask_pii("+44 20 7946 0958 1234") == "[PHONE] 1234"  # a phone never swallows the next number


def test_masking_is_linear_on_hostile_input() -> None:
    start = time.perf_counter()
    for text in ("a" * 20000, "1" * 20000, "1 " * 10000, "a.b@" * 5000, "+1 " * 10000, "account " + "1-" * 9000):
        mask_pii(text)
    assert time.perf_counter() - start < 2.0


def _capture(logger_name: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(PiiLogFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, out, handler


def test_log_filter_masks_messages_args_and_tracebacks() -> None:
    logger, out, handler = _capture("tests.support.pii")
    try:
        logger.info("question from %s: %r", "jane@example.com", "call 555-123-4567")
        logger.warning("card 4111 1111 1111 1111 seen")
        try:
            raise ValueError("bad email bob@example.org")
        except ValueError:
            logger.exception("failed for %s", "+44 20 7946 0958")
        logger.info("order #12345 in %d", 2024)
        logger.info("bad args %s %s", "only-one@example.com")  # a format that does not fit its args
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    for secret in ("jane@example.com", "555-123-4567", "4111 1111", "bob@example.org", "7946", "only-one@"):
        assert secret not in text
    assert "question from [EMAIL]: 'call [PHONE]'" in text
    assert "WARNING card [CARD] seen" in text
    assert "failed for [PHONE]" in text and "ValueError: bad email [EMAIL]" in text
    assert "order #12345 in 2024" in text


def test_the_access_log_drops_ips_queries_and_user_ids() -> None:
    from apps.http.pii import AccessLogFilter

    for path, shown in [
        ("/v1/recommend/jane.doe@example.com?k=5", "/v1/recommend/{user}"),
        ("/v1/support/kb/search?q=my+card+4111111111111111", "/v1/support/kb/search"),
        ("/v1/recommend/stats", "/v1/recommend/stats"),
        # percent-encoded as sent, and numbers that are a whole path segment
        ("/v1/support/sessions/jane%40example.com/messages", "/v1/support/sessions/[EMAIL]/messages"),
        ("/v1/support/sessions/4111111111111111/events", "/v1/support/sessions/[CARD]/events"),
        ("/v1/support/sessions/a%40b.io%0Aforged/x", "/v1/support/sessions/[EMAIL]%0Aforged/x"),  # no line break
    ]:
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
            ("203.0.113.9:5123", "GET", path, "1.1", 200), None,
        )  # fmt: skip
        assert AccessLogFilter().filter(record)
        line = record.getMessage()
        assert line == f'- - "GET {shown} HTTP/1.1" 200' and "203.0.113.9" not in line
