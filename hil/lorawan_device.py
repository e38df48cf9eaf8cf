"""Simulated LoRaWAN 1.0.4 end devices (class A and C) for tests, demos and benchmarks.

A device builds real PHYPayloads with the same codec the gateway uses to read them
(:mod:`passerelle.lorawan.phy`), so a test exercises the whole path: OTAA join with
DevNonce as a counter, session keys derived on both sides, confirmed and unconfirmed
uplinks, MAC commands, and downlinks it decrypts and checks like a real device (MIC,
DevAddr, counter never going back).

What carries the frames (a packet forwarder over UDP, a radio medium) is the caller's
business: :meth:`EndDevice.join_request` / :meth:`uplink` return bytes, and
:meth:`receive` takes the bytes of a downlink.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from passerelle.lorawan import crypto, mac, phy


class DeviceError(Exception):
    """A downlink the device rejects (wrong MIC, not for it, counter going back)."""


@dataclass(slots=True)
class Downlink:
    fport: int | None
    payload: bytes  # decrypted FRMPayload
    ack: bool
    commands: list[mac.MacCommand]
    fcnt: int
    confirmed: bool


@dataclass(slots=True)
class EndDevice:
    dev_eui: bytes  # 8 bytes, as written
    join_eui: bytes = bytes(8)
    app_key: bytes | None = None
    device_class: str = "A"
    # ABP, or filled in by the join
    dev_addr: int | None = None
    nwk_s_key: bytes | None = None
    app_s_key: bytes | None = None
    fcnt_up: int = 0
    fcnt_down: int | None = None  # last accepted
    dev_nonce: int = 0  # the next DevNonce (1.0.4: a counter kept across joins)
    last_nonce: int = -1  # the DevNonce of the join in progress
    pending_ack: bool = False  # a confirmed downlink to acknowledge in the next uplink
    received: list[Downlink] = field(default_factory=list)
    rx_delay: int = 1
    rx2_dr: int = 0
    adr: bool = False  # set the ADR bit: the network may move our data rate and power
    datarate: int | None = None  # DR index commanded by LinkADRReq (None: the device's own)
    tx_power: int = 0  # TXPower index commanded by LinkADRReq (0 = max EIRP)
    pending_commands: list[mac.MacCommand] = field(default_factory=list)  # answers to send

    @property
    def joined(self) -> bool:
        return self.dev_addr is not None and self.nwk_s_key is not None

    # -- join ------------------------------------------------------------------------------

    def join_request(self) -> bytes:
        if self.app_key is None:
            raise DeviceError("an ABP device does not join")
        frame = phy.encode_join_request(self.app_key, self.join_eui, self.dev_eui, self.dev_nonce)
        self.last_nonce = self.dev_nonce
        self.dev_nonce += 1  # never reused, even if this join fails
        return frame

    def accept(self, phy_bytes: bytes) -> None:
        """Process a JoinAccept: keys derived as the server derived them."""
        if self.app_key is None:
            raise DeviceError("an ABP device does not join")
        try:
            ja = phy.decode_join_accept(self.app_key, phy_bytes)
        except (phy.PhyError, ValueError) as exc:
            raise DeviceError(f"JoinAccept rejected: {exc}") from exc
        nwk, app = crypto.derive_session_keys(self.app_key, ja.join_nonce, ja.net_id,
                                              self.last_nonce)
        self.dev_addr, self.nwk_s_key, self.app_s_key = ja.dev_addr, nwk, app
        self.fcnt_up, self.fcnt_down = 0, None
        self.rx_delay = ja.rx_delay or 1
        self.rx2_dr = ja.rx2_datarate

    # -- uplink ------------------------------------------------------------------------------

    def uplink(
        self,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        commands: list[mac.MacCommand] | None = None,
        repeat: bool = False,
    ) -> bytes:
        """The next uplink frame. ``repeat`` resends the previous counter (a retransmission)."""
        if not self.joined:
            raise DeviceError("not joined")
        assert self.dev_addr is not None and self.nwk_s_key is not None
        if repeat:
            self.fcnt_up -= 1
        mtype = phy.MType.ConfirmedDataUp if confirmed else phy.MType.UnconfirmedDataUp
        commands = [*(commands or []), *self.pending_commands]
        fopts = mac.encode_commands(commands) if commands else b""
        frame = phy.encode_data(
            mtype, self.dev_addr, self.fcnt_up, self.nwk_s_key, self.app_s_key,
            fport=fport, payload=payload, fopts=fopts, ack=self.pending_ack, adr=self.adr,
        )
        self.fcnt_up += 1
        self.pending_ack = False
        self.pending_commands = []
        return frame

    # -- downlink ----------------------------------------------------------------------------

    def receive(self, phy_bytes: bytes) -> Downlink:
        if not self.joined:
            raise DeviceError("not joined")
        assert self.nwk_s_key is not None and self.app_s_key is not None
        try:
            frame = phy.decode_data(phy_bytes)
        except phy.PhyError as exc:
            raise DeviceError(f"not a data frame: {exc}") from exc
        if frame.uplink:
            raise DeviceError("an uplink, not for a device")
        if frame.dev_addr != self.dev_addr:
            raise DeviceError(f"DevAddr {frame.dev_addr:08x} is not ours")
        fcnt = phy.fcnt32(self.fcnt_down, frame.fcnt)
        if fcnt is None or not phy.verify_mic(phy_bytes, self.nwk_s_key, fcnt):
            raise DeviceError(f"downlink {frame.fcnt} rejected (MIC or counter)")
        self.fcnt_down = fcnt
        key = self.nwk_s_key if frame.fport == 0 else self.app_s_key
        plain = phy.decrypt_payload(frame, key, fcnt) if frame.frm_payload else b""
        raw_cmds = plain if frame.fport == 0 else frame.fopts
        commands = mac.parse_downlink_commands(raw_cmds) if raw_cmds else []
        confirmed = frame.mtype is phy.MType.ConfirmedDataDown
        if confirmed:
            self.pending_ack = True
        for cmd in commands:
            if isinstance(cmd, mac.LinkADRReq):
                self._obey_adr(cmd)
        down = Downlink(frame.fport, plain if frame.fport else b"", frame.ack, commands, fcnt,
                        confirmed)
        self.received.append(down)
        return down

    def _obey_adr(self, req: mac.LinkADRReq) -> None:
        """Apply a LinkADRReq as an EU868 device does: all or nothing, answered next uplink."""
        dr_ok = req.data_rate == 15 or req.data_rate <= 6  # 15: keep the current rate
        power_ok = req.tx_power == 15 or req.tx_power <= 7
        # Block 0 must keep at least one of the three default channels enabled.
        mask_ok = req.ch_mask_cntl != 0 or bool(req.ch_mask & 0x0007)
        if dr_ok and power_ok and mask_ok:
            if req.data_rate != 15:
                self.datarate = req.data_rate
            if req.tx_power != 15:
                self.tx_power = req.tx_power
        self.pending_commands.append(mac.LinkADRAns(channel_mask_ack=mask_ok,
                                                    data_rate_ack=dr_ok, power_ack=power_ok))
