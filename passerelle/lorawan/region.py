"""EU868 facts the network server, the simulators and the benchmarks share (RP002-1.0.x).

One table each, so a simulated device and the server can never disagree on a data rate
index or a receive delay.
"""

from __future__ import annotations

# DR0..DR6 (DR6 is SF7 at 250 kHz); a JoinAccept's RX2DataRate indexes this.
DATARATES = ("SF12BW125", "SF11BW125", "SF10BW125", "SF9BW125", "SF8BW125",
             "SF7BW125", "SF7BW250")
DEFAULT_CHANNELS = (868.1, 868.3, 868.5)  # MHz, band M (1 %)
RX2_FREQUENCY = 869.525  # MHz, band P (10 %, 500 mW ERP)
RECEIVE_DELAY2_EXTRA = 1.0  # s: RX2 opens one second after RX1
JOIN_ACCEPT_DELAY1 = 5.0  # s
JOIN_ACCEPT_DELAY2 = 6.0  # s

# SX1276 datasheet, table 13: the lowest SNR (dB) each spreading factor demodulates.
DEMOD_FLOOR_DB: dict[int, float] = {
    5: -5.0, 6: -5.0, 7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0,
}
