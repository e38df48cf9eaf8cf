"""The street-lighting engine: calendars, control programs, the astronomical clock, presence,
actuation of luminaire controllers and contactors, fail-safe levels and energy accounting.

Names follow the TALQ data model (Calendar, CalendarRule, ControlProgram, fixed-time and
astro-clock time controls, active periods, defaultLightState) so an operator reading a TALQ
platform's export recognises them in the gateway's configuration.
"""
