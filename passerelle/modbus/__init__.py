"""Modbus RTU and TCP: register decoding, bundled maps, the bus owner and the poller.

* :mod:`.registers` — types, byte orders, scale/offset (pure, no I/O)
* :mod:`.maps` — bundled register maps (Eastron SDM120/SDM630) and the read planner
* :mod:`.config` — the ``modbus-rtu`` / ``modbus-tcp`` source sections and their checks
* :mod:`.bus` — :class:`~.bus.ModbusBus`, the single owner of a serial line or TCP link
* :mod:`.source` — :class:`~.source.ModbusSource`, the poller the agent runs
* :mod:`.read_cli` — ``passerelle modbus read`` for installers

Importing this package does not import pymodbus: the config schema needs only the first three.
"""
