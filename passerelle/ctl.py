"""``passerelle ctl``: the operator's side of signed remote configuration and commands.

::

  passerelle ctl keygen --out FILE [--force]
  passerelle ctl sign CONFIG.toml --key K --version N [--target ID | --group G]
                      [--expires DURATION] [--no-file-checks] --out BUNDLE
  passerelle ctl command NAME [--arg KEY=VALUE ...] --key K (--target ID | --group G)
                      [--expires DURATION] --out FILE
  passerelle ctl push BUNDLE --broker URL (--gateway ID | --group G) [--wait]
                      [--timeout S] [--expect N] [--ca F --cert F --key F]
  passerelle ctl status (--gateway ID | --all) --broker URL [--json] [--ca F --cert F --key F]
  passerelle ctl watch --broker URL [--gateway ID] [--count N] [--ca F --cert F --key F]

Signing happens offline (keygen, sign, command need no broker); push, status and watch talk
to the broker over MQTT 5, ``mqtts://`` with the operator's client certificate.

A push carries an MQTT 5 response topic (``passerelle/ctl/<random>/ack``, the prefix the
gateway accepts) and random correlation data. The gateway answers there and on its own
``config/ack`` (or ``cmd/ack``); the answer after a planned restart only comes on the latter,
so ``--wait`` listens on both, matching by correlation data, else by the bundle's version
(config) or command id.

Exit status: 0 done (every gateway applied / done); 1 a gateway rejected, rolled back or
failed the push, or ``status`` found no state; 2 bad arguments or input (a configuration that
does not validate, an unreadable key or bundle); 3 timed out waiting for acks; 4 the broker
could not be reached or refused (connection, TLS, authorisation).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import re
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import aiomqtt
import cbor2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import senml
from .config import ConfigError, parse, read_toml
from .control.envelope import (
    COMMAND_TYPE,
    CONFIG_TYPE,
    COSE_SIGN1_TAG,
    parse_duration,
    sign_command,
    sign_config,
)
from .control.envelope import CONTENT_TYPE as HEADER_CONTENT_TYPE
from .control.keys import KeyFileError, generate_keypair, key_id, load_private_key
from .schema import GatewayId
from .uplink.client import AckedClient, PublishRefused

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INPUT = 2
EXIT_TIMEOUT = 3
EXIT_BROKER = 4

RESPONSE_PREFIX = "passerelle/ctl/"  # the only response topics a gateway answers on
CONNECT_TIMEOUT = 10.0
STATUS_WINDOW = 1.5  # retained states arrive right after SUBSCRIBE; this is plenty

STATUSES = {
    "config": {"accepted", "applied", "rejected", "rolled_back"},
    "command": {"done", "rejected", "failed"},
}
FINAL = {"applied", "rejected", "rolled_back", "done", "failed"}
SUCCESS = {"applied", "done"}
_STYLE = {"accepted": "cyan", "applied": "green", "done": "green"}

# Gateway ids and group names are single topic levels: the gateway id rule of the schema.
_ID = re.compile(get_args(GatewayId)[1].pattern)
# A command name is a topic level, cmd/<name>, and never the answer topic cmd/ack (envelope.py).
_COMMAND = re.compile(r"(?!ack$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# One step of a dotted config path as config.py writes it: key, "quoted key" or [index].
_STEP = re.compile(r'\.?(?:([A-Za-z0-9_-]+)|("(?:[^"\\]|\\.)*"))|\[(\d+)\]')


class CtlError(Exception):
    """One line for stderr, and the exit status that goes with it."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code


def _out() -> Console:
    # Made per call: tests (and pipes) swap sys.stdout; no colour codes when it is not a tty.
    return Console(highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    print(f"passerelle ctl: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ keygen


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        priv, pub, kid = generate_keypair(args.out, overwrite=args.force)
    except KeyFileError as exc:
        raise CtlError(str(exc)) from None
    except OSError as exc:
        raise CtlError(f"cannot write key to '{args.out}': {exc.strerror or exc}") from None
    print(f"key id       {kid.hex()}")
    print(f"public key   {pub}   (copy to each gateway, list it in control.operator_keys)")
    print(f"private key  {priv}   (mode 0600: keep it on this machine only)")
    return EXIT_OK


# -------------------------------------------------------------------------------- sign


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        document, base_dir = read_toml(args.config)
    except ConfigError as exc:
        raise CtlError(f"{args.config}: {exc.errors[0][1]}") from None
    errors = _config_errors(document, base_dir)
    absent = [e for e in errors if _names_absent_file(document, base_dir, *e)]
    if args.no_file_checks:
        errors = [e for e in errors if e not in absent]
    errors += _remote_rules(document, args.target)
    if errors:
        print(f"{args.config}: configuration refused, nothing signed", file=sys.stderr)
        for where, why in errors:
            print(f"  {where}: {why}", file=sys.stderr)
        if absent and not args.no_file_checks:
            print(
                f"  ({len(absent)} of these name files absent from this machine; if they are on "
                "the gateway, sign with --no-file-checks: the gateway checks them itself)",
                file=sys.stderr,
            )
        return EXIT_INPUT
    key = _private_key(args.key)
    expires = None if args.expires is None else int(time.time()) + args.expires
    try:
        bundle = sign_config(
            document,
            key,
            version=args.version,
            target=args.target,
            group=args.group,
            expires=expires,
        )
    except ValueError as exc:  # a TOML value CBOR cannot carry (a local time), named by path
        raise CtlError(f"{args.config}: {exc}") from None
    _write(args.out, bundle)
    kid = key_id(key.public_key()).hex()
    print(
        f"signed config version {args.version} for {_audience(args.target, args.group)}, "
        f"{_expiry(expires)}, key {kid}: {len(bundle)} bytes -> {args.out}"
    )
    if args.target is None:
        print(f"gateway.id {document['gateway']['id']!r} is not sent as an identity: each "
              f"gateway that applies this bundle keeps its own id")
    return EXIT_OK


def _config_errors(document: dict[str, Any], base_dir: Path) -> list[tuple[str, str]]:
    try:
        parse(document, base_dir)
    except ConfigError as exc:
        return list(exc.errors)
    return []


def _names_absent_file(document: dict[str, Any], base_dir: Path, where: str, why: str) -> bool:
    """True if the error is about a file path that does not exist (or cannot be read) here.

    parse() checks that certificates, keys and operator keys exist; on the operator's laptop
    they usually do not, as they live on the gateway. The error is recognised by its value,
    not its wording: the value at ``where`` is a path, resolved as parse() does, that the
    reason quotes and that this machine lacks.
    """
    value = _value_at(document, where)
    if not isinstance(value, str) or not value:
        return False
    path = os.path.normpath(base_dir / value)
    return path in why and not os.access(path, os.R_OK)


def _value_at(document: Any, where: str) -> Any:
    node, pos = document, 0
    while pos < len(where):
        m = _STEP.match(where, pos)
        if m is None or m.end() == pos:
            return None
        pos = m.end()
        if m[3] is not None:
            index = int(m[3])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        else:
            key = m[1] if m[1] is not None else json.loads(m[2])
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _remote_rules(document: dict[str, Any], target: str | None) -> list[tuple[str, str]]:
    """What the gateway's applier refuses on top of the schema: say it before signing."""
    errors = []
    gateway = document.get("gateway")
    gid = gateway.get("id") if isinstance(gateway, dict) else None
    if target is not None and isinstance(gid, str) and gid != target:
        errors.append(
            ("gateway.id", f"{gid!r} but --target is {target!r}: an identity changes only on site")
        )
    control = document.get("control")
    keys = control.get("operator_keys") if isinstance(control, dict) else None
    if not keys:
        errors.append(
            (
                "control.operator_keys",
                "a remote configuration must keep at least "
                "one operator key, or no one could ever reach the gateway again",
            )
        )
    return errors


def _private_key(path: str) -> Any:
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise CtlError(str(exc)) from None
    except OSError as exc:
        raise CtlError(f"cannot read key '{path}': {exc.strerror or exc}") from None


def _write(path: str, data: bytes) -> None:
    """Replace ``path`` whole: a half-written bundle must never be pushed."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise CtlError(f"cannot write '{path}': {exc.strerror or exc}") from None


def _audience(target: str | None, group: str | None) -> str:
    if target is not None:
        return f"gateway {target}"
    if group is not None:
        return f"group {group}"
    return "any gateway trusting the key"


def _expiry(expires: int | None) -> str:
    if expires is None:
        return "no expiry"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    return f"expires {stamp} (in {_span(expires - time.time())})"


# ----------------------------------------------------------------------------- command


def cmd_command(args: argparse.Namespace) -> int:
    command_args = _command_args(args.arg or [])
    key = _private_key(args.key)
    expires = int(time.time()) + args.expires
    try:
        bundle = sign_command(
            args.name, command_args, key, expires=expires, target=args.target, group=args.group
        )
    except ValueError as exc:  # a name that cannot be a topic level, an argument CBOR lacks
        raise CtlError(str(exc)) from None
    _write(args.out, bundle)
    info = peek_bundle(bundle)
    print(
        f"signed command {args.name} {json.dumps(command_args)} for "
        f"{_audience(args.target, args.group)}, id {info.command_id}, {_expiry(expires)}: "
        f"{len(bundle)} bytes -> {args.out}"
    )
    return EXIT_OK


def _command_args(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses (``3``, ``true``, ``[1,2]``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise CtlError(f"--arg {pair!r}: expected KEY=VALUE")
        if name in out:
            raise CtlError(f"--arg {name}: given twice")
        try:
            out[name] = json.loads(text)
        except ValueError:
            out[name] = text
    return out


# -------------------------------------------------------------------- bundle, unverified


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """What a signed bundle says it is for, read without checking its signature."""

    kind: str  # config | command
    version: int | None = None
    name: str | None = None
    command_id: str | None = None
    target: str | None = None
    group: str | None = None
    expires: int | None = None


def peek_bundle(data: bytes) -> BundleInfo:
    """Route a bundle without verifying it: the operator's machine may not hold the trust set.

    The gateway verifies everything; this only decides the topic and what acks to wait for,
    so a forged field can at worst send the bundle where it is rejected.
    """
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for garbage
        raise ValueError(f"not CBOR ({exc})") from None
    if not (isinstance(obj, cbor2.CBORTag) and obj.tag == COSE_SIGN1_TAG):
        raise ValueError("not a COSE_Sign1 message (CBOR tag 18)")
    parts = obj.value
    if not (
        isinstance(parts, list | tuple)  # cbor2 may give an array inside a tag as a tuple
        and len(parts) == 4
        and isinstance(parts[0], bytes)
        and isinstance(parts[2], bytes)
    ):
        raise ValueError("COSE_Sign1 is [protected, unprotected, payload, signature]")
    try:
        protected = cbor2.loads(parts[0])
        payload = cbor2.loads(parts[2])
    except Exception as exc:
        raise ValueError(f"header or payload is not CBOR ({exc})") from None
    if not isinstance(protected, dict) or not isinstance(payload, dict):
        raise ValueError("header and payload must be CBOR maps")
    content_type = protected.get(HEADER_CONTENT_TYPE)
    kind = {CONFIG_TYPE: "config", COMMAND_TYPE: "command"}.get(content_type)  # type: ignore[arg-type]
    if kind is None or payload.get("type") != kind:
        raise ValueError(
            f"content type {content_type!r} / payload type "
            f"{payload.get('type')!r}: neither a config nor a command"
        )

    def field_of(name: str, kind_: type) -> Any:
        value = payload.get(name)
        if value is not None and (not isinstance(value, kind_) or isinstance(value, bool)):
            raise ValueError(f"payload field {name!r} is not a {kind_.__name__}")
        return value

    info = BundleInfo(
        kind=kind,
        version=field_of("version", int),
        name=field_of("name", str),
        command_id=field_of("id", str),
        target=field_of("target", str),
        group=field_of("group", str),
        expires=field_of("expires", int),
    )
    if kind == "config" and info.version is None:
        raise ValueError("config bundle without a version")
    if kind == "command" and (info.name is None or not _COMMAND.fullmatch(info.name)):
        raise ValueError(f"command bundle with a bad name {info.name!r}")
    return info


# ------------------------------------------------------------------------------ broker


@dataclass(frozen=True, slots=True)
class Broker:
    url: str
    host: str
    port: int
    tls: ssl.SSLContext | None


def broker_from_args(args: argparse.Namespace) -> Broker:
    """``mqtts://host[:port]`` (TLS, client certificate with --cert/--key) or ``mqtt://``."""
    parts = urlsplit(args.broker)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtts", "mqtt") or not parts.hostname:
        raise CtlError(f"--broker {args.broker!r}: expected mqtts://host[:port]")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
        raise CtlError(f"--broker {args.broker!r}: expected mqtts://host[:port], nothing else")
    try:
        port = parts.port or (8883 if scheme == "mqtts" else 1883)
    except ValueError:
        raise CtlError(f"--broker {args.broker!r}: port must be in 1..65535") from None
    if scheme == "mqtt":
        if args.ca or args.cert or args.tls_key:
            raise CtlError("--ca/--cert/--key need an mqtts:// broker")
        _warn(
            f"{args.broker}: plaintext MQTT, for labs only (bundles stay signed, but acks, "
            "states and measurements travel in clear)"
        )
        return Broker(args.broker, parts.hostname, port, None)
    if bool(args.cert) != bool(args.tls_key):
        raise CtlError("--cert and --key go together (the client certificate and its key)")
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise CtlError(f"{flag} {path}: no such file")
    try:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.cert:
            ctx.load_cert_chain(args.cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CtlError(f"cannot load TLS files (--ca/--cert/--key): {_reason(exc)}") from None
    return Broker(args.broker, parts.hostname, port, ctx)


class _LastSocketError(logging.Handler):
    """Keeps paho's last complaint (it logs, not raises, what broke a socket) for the message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


_socket_error = _LastSocketError()
_mqtt_log = logging.getLogger("passerelle.ctl.mqtt")
_mqtt_log.addHandler(_socket_error)
_mqtt_log.propagate = False  # one line on stderr, ours, not paho's log records too


class OperatorClient(AckedClient):
    """Fails the connect as soon as the broker drops it, not at the timeout.

    A broker that refuses the client certificate closes the socket after the TLS handshake
    (TLS 1.3 checks it late); aiomqtt would then wait the whole timeout for a CONNACK.
    """

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        if not self._connected.done():
            why = _socket_error.message or "no reason given"
            self._connected.set_exception(
                aiomqtt.MqttError(f"the broker closed the connection: {why}")
            )
            # Marked as seen: if no connect is waiting any more, asyncio must not complain.
            self._connected.exception()
            return
        super()._on_disconnect(client, userdata, *args)


def _client(broker: Broker) -> OperatorClient:
    _socket_error.message = None
    return OperatorClient(
        broker.host,
        broker.port,
        logger=_mqtt_log,
        identifier=f"passerelle-ctl-{secrets.token_hex(6)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=broker.tls,
        timeout=CONNECT_TIMEOUT,
    )


def _online(
    args: argparse.Namespace, job: Callable[[argparse.Namespace, Broker], Coroutine[Any, Any, int]]
) -> int:
    """Run a broker job; whatever the network or TLS did becomes one line, never a trace."""
    broker = broker_from_args(args)
    try:
        return asyncio.run(job(args, broker))
    except PublishRefused as exc:
        raise CtlError(f"broker {broker.url}: {exc}", EXIT_BROKER) from None
    except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
        raise CtlError(f"broker {broker.url}: {_reason(exc)}", EXIT_BROKER) from None


def _reason(exc: BaseException) -> str:
    """What went wrong, in the operator's terms (aiomqtt turns socket errors into text)."""
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS: the broker's certificate is not trusted ({text}); check --ca and the host"
    if any(alert in text for alert in _CLIENT_CERT_ALERTS):
        return f"TLS: the broker refused the client certificate ({text}); check --cert/--key"
    if isinstance(exc, ssl.SSLError) or "SSL" in text:
        return f"TLS: {text}"
    return text


# TLS alerts a broker sends about the client's certificate (OpenSSL's wording).
_CLIENT_CERT_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
)


# -------------------------------------------------------------------------------- push


def cmd_push(args: argparse.Namespace) -> int:
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read bundle '{args.bundle}': {exc.strerror or exc}") from None
    try:
        info = peek_bundle(data)
    except ValueError as exc:
        raise CtlError(f"{args.bundle}: not a signed Passerelle bundle: {exc}") from None
    _check_audience(info, args.gateway, args.group)
    if args.expect is not None and args.group is None:
        raise CtlError("--expect counts the gateways of a --group push")
    return _online(args, lambda a, b: _push(a, b, data, info))


def _check_audience(info: BundleInfo, gateway: str | None, group: str | None) -> None:
    """Refuse a push every gateway would reject anyway, before it reaches the street."""
    what = "config" if info.kind == "config" else f"command {info.name}"
    if info.target is not None and info.target != gateway:
        to = f"gateway {gateway}" if gateway else f"group {group}"
        raise CtlError(f"this {what} is signed for gateway {info.target}, not for {to}")
    if info.group is not None and group is not None and info.group != group:
        raise CtlError(f"this {what} is signed for group {info.group}, not for group {group}")
    if info.expires is not None and info.expires <= time.time():
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.expires))
        raise CtlError(f"this {what} expired at {stamp}: sign it again")


@dataclass(slots=True)
class Ack:
    gateway: str
    status: str
    reason: str | None
    text: str
    version: int | None
    time: float | None


@dataclass(slots=True)
class AckBook:
    """The acks of one push, per gateway: which are ours, which are final, the exit status."""

    info: BundleInfo
    correlation: bytes
    response_topic: str
    gateway: str | None  # None: a group push
    latest: dict[str, Ack] = field(default_factory=dict)
    final: dict[str, Ack] = field(default_factory=dict)
    ignored: int = 0
    _seen: set[tuple[Any, ...]] = field(default_factory=set)

    def offer(self, topic: str, payload: bytes, correlation: bytes | None) -> Ack | None:
        """The ack in this message if it answers this push and is new, else None."""
        if correlation is not None and correlation != self.correlation:
            return None  # another operator's push
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.ignored += 1
            return None
        if correlation is None and topic != self.response_topic and not self._same_bundle(doc):
            return None
        gateway = doc.get("gateway")
        if not isinstance(gateway, str):
            gateway = topic.split("/")[1] if topic != self.response_topic else self.gateway
        status = doc.get("status")
        if gateway is None or status not in STATUSES[self.info.kind]:
            self.ignored += 1
            return None
        if self.gateway is not None and gateway != self.gateway:
            return None
        reason, text, stamp = doc.get("reason"), doc.get("text"), doc.get("time")
        key = (gateway, status, reason, text, stamp)
        if key in self._seen:
            return None  # the same ack on the response topic and on config/ack
        self._seen.add(key)
        version = doc.get("version")
        ack = Ack(
            gateway,
            status,
            reason if isinstance(reason, str) else None,
            text if isinstance(text, str) else "",
            version if isinstance(version, int) and not isinstance(version, bool) else None,
            stamp if isinstance(stamp, int | float) and not isinstance(stamp, bool) else None,
        )
        self.latest[gateway] = ack
        if status in FINAL:
            self.final[gateway] = ack
        return ack

    def _same_bundle(self, doc: dict[str, Any]) -> bool:
        if self.info.kind == "config":
            version = doc.get("version")
            return type(version) is int and version == self.info.version
        return doc.get("id") is not None and doc.get("id") == self.info.command_id

    def done(self, expect: int | None) -> bool:
        if self.gateway is not None:
            return self.gateway in self.final
        return expect is not None and len(self.final) >= expect

    def exit_status(self, expect: int | None) -> int:
        if any(a.status not in SUCCESS for a in self.final.values()):
            return EXIT_REFUSED
        if self.gateway is not None:
            return EXIT_OK if self.gateway in self.final else EXIT_TIMEOUT
        if expect is not None:
            return EXIT_OK if len(self.final) >= expect else EXIT_TIMEOUT
        # A group without --expect: listened the whole timeout; all who spoke must be done.
        if not self.latest or len(self.final) < len(self.latest):
            return EXIT_TIMEOUT
        return EXIT_OK


async def _push(args: argparse.Namespace, broker: Broker, data: bytes, info: BundleInfo) -> int:
    where = f"passerelle/{args.gateway}/" if args.gateway else f"passerelle/group/{args.group}/"
    topic = where + ("config/set" if info.kind == "config" else f"cmd/{info.name}")
    family = "config" if info.kind == "config" else "cmd"
    ack_filter = f"passerelle/{args.gateway or '+'}/{family}/ack"
    book = AckBook(
        info,
        secrets.token_bytes(16),
        f"{RESPONSE_PREFIX}{secrets.token_hex(8)}/ack",
        args.gateway,
    )
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = book.response_topic
    props.CorrelationData = book.correlation
    out = _out()
    what = f"config version {info.version}" if info.kind == "config" else f"command {info.name}"
    timed_out = False
    async with _client(broker) as client:
        if args.wait:  # before publishing: a fast reject must not slip past
            await client.subscribe(book.response_topic, qos=1)
            await client.subscribe(ack_filter, qos=1)
        await client.publish_acked(topic, data, properties=props, timeout=CONNECT_TIMEOUT)
        out.print(f"published {what} on {topic} ({len(data)} bytes)")
        if not args.wait:
            return EXIT_OK
        timed_out = not await _collect(client, book, args, out)
    _ack_table(out, book, args)
    if timed_out and args.expect is not None:
        out.print(
            f"{len(book.final)} of {args.expect} expected gateways answered "
            f"within {args.timeout:g} s"
        )
    elif timed_out and args.gateway is not None:
        out.print(f"no final ack from {args.gateway} within {args.timeout:g} s")
    return book.exit_status(args.expect)


async def _collect(
    client: OperatorClient, book: AckBook, args: argparse.Namespace, out: Console
) -> bool:
    """Print acks as they come; True when done, False on the timeout."""
    who = args.gateway or f"group {args.group}"
    status = out.status(f"waiting for acks from {who}") if out.is_terminal else None
    if status is not None:
        status.start()
    try:
        async with asyncio.timeout(args.timeout):
            async for message in client.messages:
                ack = book.offer(str(message.topic), _payload(message), _correlation(message))
                if ack is not None:
                    out.print(_ack_line(ack))
                if book.done(args.expect):
                    return True
    except TimeoutError:
        return False
    finally:
        if status is not None:
            status.stop()
    return False  # the message stream ended (it does not, short of an error)


def _payload(message: aiomqtt.Message) -> bytes:
    p = message.payload
    return p if isinstance(p, bytes) else bytes(p) if isinstance(p, bytearray) else b""


def _correlation(message: aiomqtt.Message) -> bytes | None:
    data = getattr(message.properties, "CorrelationData", None)
    return bytes(data) if isinstance(data, bytes | bytearray) else None


def _status_text(status: str) -> Text:
    return Text(status, style=_STYLE.get(status, "bold red"))


def _ack_line(ack: Ack) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(ack.time or time.time()))
    line = Text.assemble(f"{stamp}  {ack.gateway}  ", _status_text(ack.status))
    if ack.reason:
        line.append(f" ({ack.reason})")
    if ack.text:
        line.append(f"  {ack.text}")
    return line


def _ack_table(out: Console, book: AckBook, args: argparse.Namespace) -> None:
    config = book.info.kind == "config"
    table = Table(title="config acks" if config else f"command {book.info.name}")
    for column in ("gateway", "version" if config else "id", "status", "reason", "text"):
        table.add_column(column, overflow="fold")
    gateways = sorted(book.latest)
    if args.gateway is not None and args.gateway not in book.latest:
        gateways = [args.gateway]
    for gw in gateways:
        ack = book.final.get(gw)
        label = "-" if config else book.info.command_id or "-"
        if ack is None:
            last = book.latest.get(gw)
            state = f"{last.status}, no final ack" if last else "no answer"
            version = str(book.info.version) if config else label
            table.add_row(
                gw, version, Text(state, style="yellow"), "-", Text(last.text if last else "")
            )
            continue
        version = str(ack.version if ack.version is not None else book.info.version)
        table.add_row(
            gw,
            version if config else label,
            _status_text(ack.status),
            ack.reason or "-",
            Text(ack.text),
        )
    out.print(table)


# ------------------------------------------------------------------------------ status


def cmd_status(args: argparse.Namespace) -> int:
    return _online(args, _status)


async def _status(args: argparse.Namespace, broker: Broker) -> int:
    topic_filter = f"passerelle/{args.gateway or '+'}/state"
    states: dict[str, dict[str, Any]] = {}
    async with _client(broker) as client:
        await client.subscribe(topic_filter, qos=1)
        try:
            async with asyncio.timeout(STATUS_WINDOW):
                async for message in client.messages:
                    topic = str(message.topic)
                    payload = _payload(message)
                    if not payload:
                        continue  # a cleared retained state
                    try:
                        doc = json.loads(payload)
                    except ValueError as exc:
                        print(f"{topic}: unreadable state: {exc}", file=sys.stderr)
                        continue
                    if not isinstance(doc, dict):
                        print(f"{topic}: unreadable state: not a JSON object", file=sys.stderr)
                        continue
                    states[topic.split("/")[1]] = doc
                    if args.gateway is not None:
                        break
        except TimeoutError:
            pass
    if not states:
        what = f"gateway {args.gateway}" if args.gateway else "any gateway"
        print(
            f"no state retained for {what} on {broker.url} under {topic_filter} "
            "(never connected to this broker, or another id)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    rows = [_state_row(gw, states[gw]) for gw in sorted(states)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"gateways on {broker.url}")
    for column in ("gateway", "online", "config", "hash", "store depth", "last error", "uptime"):
        table.add_column(column, overflow="fold")
    for row in rows:
        version = "-" if row["config_version"] is None else str(row["config_version"])
        if row["config_pending"] is not None:
            version += f" (pending {row['config_pending']})"
        table.add_row(
            row["gateway"],
            Text("yes", style="green") if row["online"] else Text("no", style="bold red"),
            version,
            (row["config_hash"] or "-")[:12],
            "-" if row["store_depth"] is None else str(row["store_depth"]),
            Text(row["last_error"] or "-"),
            _span(row["uptime"]) if row["online"] and row["uptime"] is not None else "-",
        )
    _out().print(table)
    return EXIT_OK


def _state_row(gateway: str, state: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a gateway's retained ``state`` an operator looks at first."""

    def sub(section: str, key: str) -> Any:
        value = state.get(section)
        return value.get(key) if isinstance(value, dict) else None

    uptime = state.get("uptime")
    return {
        "gateway": gateway,
        "online": state.get("online") is True,
        "config_version": sub("config", "version"),
        "config_hash": sub("config", "hash"),
        "config_pending": sub("config", "pending"),
        "store_depth": sub("store", "depth"),
        # The last will says why it went offline in "reason".
        "last_error": state.get("last_error") or state.get("reason"),
        "uptime": uptime if isinstance(uptime, int | float) else None,
        "state": dict(state),
    }


def _span(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


# ------------------------------------------------------------------------------- watch


def cmd_watch(args: argparse.Namespace) -> int:
    return _online(args, _watch)


async def _watch(args: argparse.Namespace, broker: Broker) -> int:
    topic_filter = f"passerelle/{args.gateway or '+'}/up/senml"
    printed = packs = bad = 0
    try:
        async with _client(broker) as client:
            await client.subscribe(topic_filter, qos=1)
            print(f"watching {topic_filter} on {broker.url}", file=sys.stderr, flush=True)
            async for message in client.messages:
                topic = str(message.topic)
                payload = _payload(message)
                try:
                    records, _ = senml.decode_pack(payload)
                except Exception as exc:  # anything a bad pack makes the decoder raise
                    bad += 1
                    print(
                        f"{topic}: bad pack ({len(payload)} bytes): {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                packs += 1
                gateway = topic.split("/")[1]
                for record in records:
                    sys.stdout.write(_record_line(gateway, record) + "\n")
                    sys.stdout.flush()
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return EXIT_OK
    except BrokenPipeError:  # piped into head(1) or a tool that quit: a normal end
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        print(
            f"watch: {printed} records from {packs} packs, {bad} bad packs",
            file=sys.stderr,
            flush=True,
        )
    return EXIT_OK


def _record_line(gateway: str, r: senml.Resolved) -> str:
    value: Any = r.value
    if isinstance(value, bytes):  # as SenML JSON writes vd (RFC 8428 section 4.3)
        value = base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    elif isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON has no NaN or infinity
    doc = {"gateway": gateway, "name": r.name, "value": value, "unit": r.unit, "time": r.time}
    return json.dumps(doc, separators=(",", ":"))


# ------------------------------------------------------------------------------ parser


def _identifier(text: str) -> str:
    if not _ID.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: lowercase letters, digits and '-' only (1-63, first a letter or digit)"
        )
    return text


def _duration(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return int(seconds)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_broker(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", required=True, metavar="URL", help="mqtts://host[:port] (mqtt:// for labs only)"
    )
    p.add_argument("--ca", metavar="FILE", help="CA certificate of the broker (PEM)")
    p.add_argument("--cert", metavar="FILE", help="operator client certificate (PEM)")
    p.add_argument("--key", dest="tls_key", metavar="FILE", help="its private key (PEM)")


def _add_audience(p: argparse.ArgumentParser, *, required: bool) -> None:
    who = p.add_mutually_exclusive_group(required=required)
    who.add_argument("--target", type=_identifier, metavar="ID", help="one gateway id")
    who.add_argument("--group", type=_identifier, metavar="G", help="a group of gateways")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="passerelle ctl",
        description="Sign and push configurations and commands; see the gateways' state.",
        epilog="Exit status: 0 done, 1 rejected / rolled back / failed (or no state), "
        "2 bad arguments or input, 3 timed out, 4 broker unreachable or refused.",
    )
    sub = p.add_subparsers(dest="tool", required=True)

    keygen = sub.add_parser("keygen", help="new operator signing key (Ed25519)")
    keygen.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="private key file; the public key goes to FILE.pub",
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=cmd_keygen)

    sign = sub.add_parser("sign", help="validate and sign a configuration")
    sign.add_argument("config", metavar="CONFIG.toml")
    sign.add_argument("--key", required=True, metavar="K", help="operator private key")
    sign.add_argument(
        "--version",
        required=True,
        type=_positive_int,
        metavar="N",
        help="configuration version, higher than any before it",
    )
    _add_audience(sign, required=False)
    sign.add_argument(
        "--expires",
        type=_duration,
        metavar="DURATION",
        help="refuse the bundle after this long (15m, 2h, 7d); default never",
    )
    sign.add_argument(
        "--no-file-checks",
        action="store_true",
        help="do not check that files named in the config exist here (they are on the gateway)",
    )
    sign.add_argument("--out", required=True, metavar="BUNDLE")
    sign.set_defaults(func=cmd_sign)

    command = sub.add_parser("command", help="sign a command (reboot-agent, flush-store...)")
    command.add_argument("name", metavar="NAME")
    command.add_argument(
        "--arg",
        action="append",
        metavar="KEY=VALUE",
        help="an argument; VALUE is JSON if it parses, else a string",
    )
    command.add_argument("--key", required=True, metavar="K", help="operator private key")
    _add_audience(command, required=True)
    command.add_argument(
        "--expires",
        type=_duration,
        default=600,
        metavar="DURATION",
        help="the command is void after this long (default 10m)",
    )
    command.add_argument("--out", required=True, metavar="FILE")
    command.set_defaults(func=cmd_command)

    push = sub.add_parser("push", help="publish a signed bundle, optionally wait for the acks")
    push.add_argument("bundle", metavar="BUNDLE")
    _add_broker(push)
    who = push.add_mutually_exclusive_group(required=True)
    who.add_argument("--gateway", type=_identifier, metavar="ID")
    who.add_argument("--group", type=_identifier, metavar="G")
    push.add_argument("--wait", action="store_true", help="wait for the final acks")
    push.add_argument(
        "--timeout",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="seconds to wait with --wait (default 120; a config commits "
        "after the gateway's health window)",
    )
    push.add_argument(
        "--expect",
        type=_positive_int,
        metavar="N",
        help="with --group: done when N gateways gave a final ack",
    )
    push.set_defaults(func=cmd_push)

    status = sub.add_parser("status", help="the gateways' retained state as a table")
    which = status.add_mutually_exclusive_group(required=True)
    which.add_argument("--gateway", type=_identifier, metavar="ID")
    which.add_argument("--all", action="store_true")
    _add_broker(status)
    status.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    status.set_defaults(func=cmd_status)

    watch = sub.add_parser("watch", help="live measurements as JSON lines")
    _add_broker(watch)
    watch.add_argument("--gateway", type=_identifier, metavar="ID", help="default: all")
    watch.add_argument("--count", type=_positive_int, metavar="N", help="stop after N records")
    watch.set_defaults(func=cmd_watch)
    return p


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    try:
        return int(args.func(args))
    except CtlError as exc:
        print(f"passerelle ctl {args.tool}: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
