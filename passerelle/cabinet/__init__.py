"""The cabinet's own sensors and I/O: I2C environment sensors, door switch, contactor.

* :mod:`.config` — the ``i2c`` and ``gpio`` source sections and their semantic checks;
* :mod:`.sensors` — :class:`~.sensors.I2cSensorSource`, polling BME280/SHT3x/VEML7700;
* :mod:`.inputs` — :class:`~.inputs.GpioSource`, debounced inputs (tamper alarms) and
  relays for the lighting engine.

The chip drivers themselves are portable and live in ``drivers/``.
"""
