"""Which control program governs a night: the first matching rule of a TALQ Calendar."""

from __future__ import annotations

from datetime import date

from .model import WEEKDAYS, Calendar, CalendarRule, parse_day


def rule_matches(rule: CalendarRule, night: date) -> bool:
    """Every condition the rule gives holds for ``night`` (the date the night starts on)."""
    if rule.weekdays and WEEKDAYS[night.weekday()] not in rule.weekdays:
        return False
    if rule.start_date is None:
        return True
    start = parse_day(rule.start_date)
    end = parse_day(rule.end_date) if rule.end_date is not None else start
    if isinstance(start, date):
        assert isinstance(end, date)
        return start <= night <= end
    assert isinstance(end, tuple)
    md = (night.month, night.day)
    if start <= end:
        return start <= md <= end
    return md >= start or md <= end  # a yearly range over New Year: 12-15 .. 01-06


def select(calendar: Calendar, night: date) -> CalendarRule | None:
    """The first rule that matches (TALQ: rule order is precedence), or None."""
    for rule in calendar.rules:
        if rule_matches(rule, night):
            return rule
    return None
