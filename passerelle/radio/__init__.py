"""Radio backends behind one async interface (see :mod:`passerelle.radio.base`)."""

from .base import Radio, RadioError, RxFrame, TxRequest, TxResult, parse_datarate

__all__ = ["Radio", "RadioError", "RxFrame", "TxRequest", "TxResult", "parse_datarate"]
