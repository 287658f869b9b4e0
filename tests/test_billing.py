"""Billing's money rules (server/billing.py): call charges, renewals, the top-up threshold, the sandbox gateway."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rules.billing import (
    CENT,
    DECLINE_CARDS,
    MICRO,
    MIN_TOPUP_THRESHOLD,
    Card,
    ChargeResult,
    MemoryRecorder,
    PaymentGateway,
    Rental,
    SandboxGateway,
    add_months,
    call_charge_micro,
    crossed,
    due_renewals,
    format_amount,
    format_money,
    next_renewal,
    renewal_dates,
    retry_delay_s,
    to_micro,
    tokenize_card,
    topup_threshold,
)

D = dt.date
TODAY = D(2026, 6, 15)
VISA = "4242424242424242"


# -- money in and out ------------------------------------------------------------


@pytest.mark.parametrize(("text", "micro"), [
    ("20.00", 20_000_000),
    ("0.0200", 20_000),
    ("0.000001", 1),
    ("9999.999999", 9_999_999_999),
    ("-1.50", -1_500_000),
    ("+3", 3_000_000),
    ("0", 0),
    (".5", 500_000),
    ("1.5000000", 1_500_000),      # extra zeros are not extra decimals of value
    ("1E+3", 1_000_000_000),       # what str(Decimal) may write
    ("0E-10", 0),
    (Decimal("5.00"), 5_000_000),
    (Decimal("-0.000001"), -1),
])
def test_to_micro(text: str | Decimal, micro: int) -> None:
    assert to_micro(text) == micro


@pytest.mark.parametrize(("text", "message"), [
    ("0.0000001", "more than 6 decimal places"),
    ("1.2345678", "more than 6 decimal places"),
    ("5E-7", "more than 6 decimal places"),
    ("NaN", "not a decimal number"),
    ("Infinity", "not a decimal number"),
    ("", "not a decimal number"),
    (" 5", "not a decimal number"),
    ("1_000", "not a decimal number"),
    ("1,00", "not a decimal number"),
    ("abc", "not a decimal number"),
    ("\u0661", "not a decimal number"),  # ARABIC-INDIC DIGIT ONE: Decimal() would take it
    ("1E+999999", "too large"),
    ("10000000000000", "too large"),
    (Decimal("NaN"), "not a finite number"),
    (Decimal("-Infinity"), "not a finite number"),
])
def test_to_micro_refuses(text: str | Decimal, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_micro(text)


def test_to_micro_refuses_float() -> None:
    with pytest.raises(TypeError, match="never a float"):
        to_micro(1.5)  # type: ignore[arg-type]


@given(st.integers(-(10**15), 10**15))
@settings(max_examples=200, deadline=None)
def test_format_then_parse_round_trips(micro: int) -> None:
    assert to_micro(format_amount(micro)) == micro


@pytest.mark.parametrize(("micro", "text"), [
    (20_000_000, "20.00 USD"),
    (-1_500_000, "-1.50 USD"),
    (3_500, "0.0035 USD"),
    (0, "0.00 USD"),
    (1, "0.000001 USD"),
    (-10_000, "-0.01 USD"),
    (-500_000, "-0.50 USD"),
    (1_234_567_890_000, "1234567.89 USD"),
    (100_000, "0.10 USD"),
])
def test_format_money(micro: int, text: str) -> None:
    assert format_money(micro, "USD") == text


def test_format_money_other_currency() -> None:
    assert format_money(5_000_000, "EUR") == "5.00 EUR"
    assert format_amount(5_000_000) == "5.00"


# -- call charges ------------------------------------------------------------------


@pytest.mark.parametrize(("per_minute", "increment", "talked", "expected"), [
    ("0.0200", 60, 0, "0.00"),               # unanswered / nothing talked
    ("0.0200", 60, -5, "0.00"),              # never negative
    ("0.0200", 60, 1, "0.02"),               # one started increment is a whole one
    ("0.0200", 60, 60, "0.02"),
    ("0.0200", 60, 61, "0.04"),
    ("0.0350", 1, 1, "0.00"),                # 0.000583.. rounds to 0.00
    ("0.0350", 1, 90, "0.05"),               # 0.0525 -> 0.05
    ("0.0300", 1, 10, "0.01"),               # exactly 0.005: half-up
    ("0.0300", 1, 9, "0.00"),                # 0.0045
    ("0.0299", 1, 10, "0.00"),               # 0.004983..: just under the half cent
    ("0.0301", 1, 10, "0.01"),               # 0.005016..
    ("0.0300", 1, 30, "0.02"),               # 0.015: half-up, not half-even (would give 0.02 too)
    ("0.0300", 1, 50, "0.03"),               # 0.025: half-even would give 0.02
    ("0.0350", 60, 61, "0.07"),
    ("1.0000", 6, 7, "0.20"),                # two 6 s increments
    ("9999.999999", 1, 86400, "14400000.00"),  # 14,399,999.99856 exactly
    ("9999.999999", 60, 86400, "14400000.00"),
    ("9999.999999", 3600, 86401, "15000000.00"),  # 25 started hours: 14,999,999.9985 exactly
])
def test_call_charge_table(per_minute: str, increment: int, talked: int, expected: str) -> None:
    assert call_charge_micro(to_micro(per_minute), increment, talked) == to_micro(expected)


def test_call_charge_rounds_once_not_per_increment() -> None:
    # 90 increments of 0.0350/60 = 0.000583.. each: rounding each one would charge 0.00.
    assert call_charge_micro(35_000, 1, 90) == 5 * CENT
    # and the result is always whole cents
    assert call_charge_micro(35_000, 1, 7) % CENT == 0


@pytest.mark.parametrize(("args", "error"), [
    ((20_000, 0, 10), ValueError),
    ((20_000, -60, 10), ValueError),
    ((-1, 60, 10), ValueError),
    ((20_000, 60, 1.5), TypeError),
    ((True, 60, 10), TypeError),
])
def test_call_charge_refuses(args: tuple[object, object, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        call_charge_micro(*args)  # type: ignore[arg-type]


def _decimal_charge(per_minute_micro: int, increment_s: int, talked_s: int) -> int:
    if talked_s <= 0:
        return 0
    with decimal.localcontext(decimal.Context(prec=100, traps=[decimal.Inexact])):
        increments = -(-talked_s // increment_s)
        per_minute = Decimal(per_minute_micro).scaleb(-6)
        exact = per_minute * increments * increment_s
    charge = (exact / 60).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if exact else Decimal(0)
    return int(charge.scaleb(6))


@given(st.integers(0, 10**10), st.integers(1, 3600), st.integers(-10, 100_000))
@settings(max_examples=300, deadline=None)
def test_call_charge_matches_decimal(per_minute_micro: int, increment_s: int, talked_s: int) -> None:
    with decimal.localcontext(decimal.Context(prec=100)):
        expected = _decimal_charge(per_minute_micro, increment_s, talked_s)
    assert call_charge_micro(per_minute_micro, increment_s, talked_s) == expected


@given(st.integers(0, 10**10), st.integers(1, 3600), st.integers(-10, 100_000), st.integers(0, 5000))
@settings(max_examples=200, deadline=None)
def test_call_charge_monotone_in_talked(per_minute_micro: int, increment_s: int, talked_s: int, more: int) -> None:
    low = call_charge_micro(per_minute_micro, increment_s, talked_s)
    high = call_charge_micro(per_minute_micro, increment_s, talked_s + more)
    assert 0 <= low <= high
    assert low % CENT == 0


# -- the renewal calendar --------------------------------------------------------


def test_add_months_keeps_the_anchor_through_a_year() -> None:
    start = D(2026, 1, 31)
    got = [add_months(start, k) for k in range(13)]
    assert got == [D(2026, 1, 31), D(2026, 2, 28), D(2026, 3, 31), D(2026, 4, 30), D(2026, 5, 31),
                   D(2026, 6, 30), D(2026, 7, 31), D(2026, 8, 31), D(2026, 9, 30), D(2026, 10, 31),
                   D(2026, 11, 30), D(2026, 12, 31), D(2027, 1, 31)]


def test_add_months_anchor_after_a_short_month() -> None:
    assert add_months(D(2026, 2, 28), 1) == D(2026, 3, 28)               # anchor: the date's own day
    assert add_months(D(2026, 2, 28), 1, anchor_day=31) == D(2026, 3, 31)
    assert add_months(D(2028, 1, 31), 1) == D(2028, 2, 29)               # leap year
    assert add_months(D(2026, 3, 31), -1) == D(2026, 2, 28)
    assert add_months(D(2026, 12, 15), 1) == D(2027, 1, 15)
    with pytest.raises(ValueError, match="anchor_day"):
        add_months(D(2026, 1, 1), 1, anchor_day=32)
    with pytest.raises(ValueError, match="outside the calendar"):
        add_months(D(9999, 12, 1), 1)


def test_renewal_dates_jan_31_through_a_leap_year() -> None:
    rental = Rental("+14155550100", 5 * MICRO, D(2028, 1, 31))
    assert renewal_dates(rental, D(2028, 1, 1), D(2028, 5, 31)) == [
        D(2028, 1, 31), D(2028, 2, 29), D(2028, 3, 31), D(2028, 4, 30), D(2028, 5, 31)]


def test_renewal_dates_window() -> None:
    rental = Rental("+14155550100", 5 * MICRO, D(2026, 1, 31))
    # starting mid-schedule, bounds included
    assert renewal_dates(rental, D(2026, 2, 28), D(2026, 4, 30)) == [D(2026, 2, 28), D(2026, 3, 31), D(2026, 4, 30)]
    assert renewal_dates(rental, D(2026, 3, 1), D(2026, 3, 30)) == []
    assert renewal_dates(rental, D(2026, 3, 1), D(2026, 3, 31)) == [D(2026, 3, 31)]
    assert len(renewal_dates(rental, D(2026, 1, 1), D(2027, 1, 30))) == 12
    # renews_on after the window: nothing; never before renews_on
    assert renewal_dates(rental, D(2025, 1, 1), D(2026, 1, 30)) == []
    assert renewal_dates(rental, D(2025, 1, 1), D(2026, 1, 31)) == [D(2026, 1, 31)]
    # an empty window
    assert renewal_dates(rental, D(2026, 5, 1), D(2026, 4, 1)) == []
    # the end of the calendar is not an error
    late = Rental("+1", MICRO, D(9999, 11, 30))
    assert renewal_dates(late, D(9999, 1, 1), D(9999, 12, 31)) == [D(9999, 11, 30), D(9999, 12, 30)]


@given(st.dates(D(2000, 1, 1), D(2100, 12, 31)), st.dates(D(2000, 1, 1), D(2100, 12, 31)),
       st.integers(0, 800))
@settings(max_examples=200, deadline=None)
def test_renewal_dates_match_a_day_by_day_walk(renews_on: dt.date, start: dt.date, days: int) -> None:
    rental = Rental("+1", MICRO, renews_on)
    end = start + dt.timedelta(days=days)
    schedule = {add_months(renews_on, k, renews_on.day) for k in range(0, 12 * 103)}
    walk = [start + dt.timedelta(days=i) for i in range(days + 1)]
    assert renewal_dates(rental, start, end) == [d for d in walk if d in schedule]


def test_due_renewals_sorted_by_date_then_number() -> None:
    rentals = [Rental("+2", 2 * MICRO, D(2026, 1, 31)), Rental("+1", 1 * MICRO, D(2026, 2, 28)),
               Rental("+3", 3 * MICRO, D(2026, 2, 15))]
    assert due_renewals(rentals, D(2026, 2, 1), D(2026, 3, 31)) == [
        ("+3", D(2026, 2, 15), 3 * MICRO),
        ("+1", D(2026, 2, 28), 1 * MICRO),
        ("+2", D(2026, 2, 28), 2 * MICRO),
        ("+3", D(2026, 3, 15), 3 * MICRO),
        ("+1", D(2026, 3, 28), 1 * MICRO),
        ("+2", D(2026, 3, 31), 2 * MICRO),
    ]
    assert due_renewals([], D(2026, 1, 1), D(2026, 12, 31)) == []


# -- the top-up threshold --------------------------------------------------------


def test_next_renewal_sums_the_rentals_of_the_next_day() -> None:
    rentals = [Rental("+1", 5 * MICRO, D(2026, 7, 1)), Rental("+2", 7 * MICRO, D(2026, 5, 1)),
               Rental("+3", 100 * MICRO, D(2026, 7, 2))]
    # +1 renews on Jul 1 (first time), +2 on Jul 1 (monthly from May 1)
    assert next_renewal(rentals, TODAY) == (D(2026, 7, 1), 12 * MICRO)


def test_next_renewal_today_is_not_next() -> None:
    rentals = [Rental("+1", 50 * MICRO, D(2026, 6, 15)), Rental("+2", 4 * MICRO, D(2026, 6, 16))]
    # +1 renews today (charged today): the next upcoming date is tomorrow, with +2 only
    assert next_renewal(rentals, TODAY) == (D(2026, 6, 16), 4 * MICRO)
    # on the 16th, +1's next is Jul 15 and +2's is Jul 16
    assert next_renewal(rentals, D(2026, 6, 16)) == (D(2026, 7, 15), 50 * MICRO)
    # a monthly renewal falling today is not next either
    assert next_renewal([Rental("+1", MICRO, D(2026, 1, 15))], TODAY) == (D(2026, 7, 15), MICRO)


def test_next_renewal_clamped_anchor() -> None:
    rental = Rental("+1", MICRO, D(2026, 1, 31))
    assert next_renewal([rental], D(2026, 2, 27)) == (D(2026, 2, 28), MICRO)
    assert next_renewal([rental], D(2026, 2, 28)) == (D(2026, 3, 31), MICRO)


def test_next_renewal_without_rentals() -> None:
    assert next_renewal([], TODAY) is None
    assert next_renewal([Rental("+1", MICRO, D(9999, 12, 31))], D(9999, 12, 31)) is None


def test_topup_threshold() -> None:
    assert topup_threshold([], TODAY) == MIN_TOPUP_THRESHOLD == 3 * MICRO
    small = [Rental("+1", 1 * MICRO, D(2026, 7, 1)), Rental("+2", 1_500_000, D(2026, 7, 1))]
    assert topup_threshold(small, TODAY) == 3 * MICRO            # 2.50 < 3.00
    large = [Rental("+1", 2 * MICRO, D(2026, 7, 1)), Rental("+2", 1_500_000, D(2026, 7, 1)),
             Rental("+3", 90 * MICRO, D(2026, 8, 1))]
    assert topup_threshold(large, TODAY) == 3_500_000             # Jul 1's 3.50, not Aug 1's 90
    assert topup_threshold([Rental("+1", 25 * MICRO, D(2026, 6, 20))], TODAY) == 25 * MICRO


def test_crossed() -> None:
    t = 3 * MICRO
    assert crossed(3 * MICRO, 2_990_000, t) is True         # from exactly the threshold to below
    assert crossed(10 * MICRO, -MICRO, t) is True
    assert crossed(2_990_000, 2_500_000, t) is False        # already below: no second top-up
    assert crossed(5 * MICRO, 5 * MICRO, t) is False
    assert crossed(5 * MICRO, 3 * MICRO, t) is False        # at the threshold is not below it
    assert crossed(2 * MICRO, 4 * MICRO, t) is False        # a credit never crosses downward


def test_retry_delay_sequence_and_cap() -> None:
    assert [retry_delay_s(a, 30.0, 3600.0) for a in range(1, 10)] == [
        30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    assert retry_delay_s(1, 0.5, 10) == 0.5
    assert retry_delay_s(10**6, 1.0, 60.0) == 60.0          # no overflow for a huge attempt count
    assert retry_delay_s(3, 0.0, 60.0) == 0.0
    assert retry_delay_s(3, 10.0, 0.0) == 0.0


@pytest.mark.parametrize(("attempt", "base", "cap"), [(0, 1.0, 10.0), (-1, 1.0, 10.0), (1, -1.0, 10.0),
                                                      (1, 1.0, -10.0), (1, float("nan"), 10.0)])
def test_retry_delay_refuses(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        retry_delay_s(attempt, base, cap)


# -- cards -------------------------------------------------------------------------


def test_tokenize_visa() -> None:
    card = tokenize_card(VISA, 12, 2030, TODAY)
    assert card.brand == "visa"
    assert card.last4 == "4242"
    assert card.token.startswith("card_") and len(card.token) == 5 + 24
    assert VISA not in card.token
    assert int(card.token[5:], 16) >= 0  # hex


def test_tokenize_is_deterministic_and_ignores_separators() -> None:
    a = tokenize_card(VISA, 12, 2030, TODAY)
    assert tokenize_card("4242 4242 4242 4242", 1, 2031, TODAY) == Card(a.token, "visa", "4242")
    assert tokenize_card("4242-4242-4242-4242", 6, 2026, TODAY).token == a.token   # this month still valid
    assert tokenize_card("4000056655665556", 12, 2030, TODAY).token != a.token


@pytest.mark.parametrize(("number", "brand"), [
    ("5555555555554444", "mastercard"),
    ("2223003122003222", "mastercard"),
    ("378282246310005", "amex"),
    ("6011111111111117", "card"),
])
def test_tokenize_brands(number: str, brand: str) -> None:
    card = tokenize_card(number, 12, 2030, TODAY)
    assert (card.brand, card.last4) == (brand, number[-4:])


@pytest.mark.parametrize(("number", "month", "year", "message"), [
    ("4242424242424241", 12, 2030, "Luhn"),
    ("42424242424", 12, 2030, "12 to 19 digits"),           # 11 digits
    ("42424242424242424242", 12, 2030, "12 to 19 digits"),  # 20 digits
    ("", 12, 2030, "only digits"),
    ("4242a24242424242", 12, 2030, "only digits"),
    ("4242.4242.4242.4242", 12, 2030, "only digits"),
    ("\u0664242424242424242", 12, 2030, "only digits"),     # non-ASCII digit
    (VISA, 5, 2026, "expired"),
    (VISA, 12, 2025, "expired"),
    (VISA, 13, 2030, "month"),
    (VISA, 0, 2030, "month"),
    (VISA, 12, 30, "four digits"),
])
def test_tokenize_refuses(number: str, month: int, year: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokenize_card(number, month, year, TODAY)


# -- the sandbox gateway -----------------------------------------------------------


def _card(number: str = VISA) -> Card:
    return tokenize_card(number, 12, 2030, TODAY)


def test_sandbox_charges_a_good_card() -> None:
    recorder = MemoryRecorder()
    gateway: PaymentGateway = SandboxGateway(recorder)
    result = gateway.charge(key="topup-1-1", tenant="acme", card=_card(), amount_micro=20 * MICRO, currency="USD")
    assert result == ChargeResult(True, "ch_1", "")
    stored = recorder.charges["topup-1-1"]
    assert (stored.tenant, stored.amount_micro, stored.currency, stored.ok) == ("acme", 20 * MICRO, "USD", True)
    assert stored.card_token == _card().token


@pytest.mark.parametrize(("number", "reason"), sorted(DECLINE_CARDS.items()))
def test_sandbox_declines_the_test_cards(number: str, reason: str) -> None:
    recorder = MemoryRecorder()
    result = SandboxGateway(recorder).charge(key="k", tenant="acme", card=_card(number), amount_micro=MICRO,
                                             currency="EUR")
    assert result == ChargeResult(False, "ch_1", reason)   # a decline has a reference too
    assert recorder.charges["k"].ok is False


def test_sandbox_same_key_is_the_first_outcome() -> None:
    recorder = MemoryRecorder()
    gateway = SandboxGateway(recorder)
    first = gateway.charge(key="topup-7-1", tenant="acme", card=_card(), amount_micro=20 * MICRO, currency="USD")
    again = gateway.charge(key="topup-7-1", tenant="acme", card=_card(), amount_micro=99 * MICRO, currency="USD")
    assert again == first
    assert len(recorder.charges) == 1
    assert recorder.charges["topup-7-1"].amount_micro == 20 * MICRO
    # a decline is an outcome too: retrying the same key with a good card does not charge it
    declined = gateway.charge(key="topup-8-1", tenant="acme", card=_card("4000000000000002"),
                              amount_micro=MICRO, currency="USD")
    assert gateway.charge(key="topup-8-1", tenant="acme", card=_card(), amount_micro=MICRO,
                          currency="USD") == declined
    assert len(recorder.charges) == 2


def test_sandbox_decline_then_a_new_key_with_a_good_card() -> None:
    recorder = MemoryRecorder()
    gateway = SandboxGateway(recorder)
    declined = gateway.charge(key="topup-9-1", tenant="acme", card=_card("4000000000009995"),
                              amount_micro=20 * MICRO, currency="USD")
    assert (declined.ok, declined.decline_reason) == (False, "insufficient_funds")
    retried = gateway.charge(key="topup-9-2", tenant="acme", card=_card(), amount_micro=20 * MICRO, currency="USD")
    assert retried == ChargeResult(True, "ch_2", "")
    assert retried.reference != declined.reference


@pytest.mark.parametrize(("key", "amount", "currency", "message"), [
    ("k", 0, "USD", "positive"),
    ("k", -MICRO, "USD", "positive"),
    ("k", MICRO, "GBP", "USD or EUR"),
    ("k", MICRO, "usd", "USD or EUR"),
    ("", MICRO, "USD", "key"),
])
def test_sandbox_refuses_bad_requests(key: str, amount: int, currency: str, message: str) -> None:
    recorder = MemoryRecorder()
    with pytest.raises(ValueError, match=message):
        SandboxGateway(recorder).charge(key=key, tenant="acme", card=_card(), amount_micro=amount, currency=currency)
    assert recorder.charges == {}


def test_memory_recorder_is_idempotent_under_threads() -> None:
    recorder = MemoryRecorder()
    gateway = SandboxGateway(recorder)
    results: list[ChargeResult] = []

    def charge(i: int) -> None:
        results.append(gateway.charge(key=f"k{i % 3}", tenant="acme", card=_card(), amount_micro=MICRO,
                                      currency="USD"))

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(recorder.charges) == 3
    assert {r.reference for r in results} == {"ch_1", "ch_2", "ch_3"}
