"""``python -m passerelle.modbus.read_cli`` as a subprocess against the simulators (PTY, TCP)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from hil.modbus_sim import EnergyMeterSim, RtuLine, TcpServer, UnitSim
from passerelle.modbus import read_cli


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "passerelle.modbus.read_cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serial_read_text_and_json() -> None:
    meter = EnergyMeterSim(1, "sdm120", luminaires=8, rated_power=50.0, dimming=0.5)  # 200 W
    async with RtuLine([meter]) as line:
        base = ["--serial", line.path, "--baud", "9600", "--unit", "1", "--function", "input"]
        code, out, err = await cli(*base, "--register", "0x000C", "--type", "float32")
        assert (code, err) == (0, "")
        first, second = out.splitlines()
        assert float(first) == pytest.approx(200.0)
        assert second == "unit 1 input 0x000c float32 ABCD: registers 0x4348 0x0000"

        code, out, err = await cli(
            *base, "--register", "12", "--type", "float32", "--json", "--scale", "0.001"
        )
        assert code == 0, err
        doc = json.loads(out)
        assert doc["value"] == pytest.approx(0.2)
        assert doc["registers"] == [0x4348, 0x0000]
        assert doc["address"] == 12 and doc["type"] == "float32"


async def test_byte_order_and_holding_default() -> None:
    u = UnitSim(17)
    u.set_value("holding", 100, -123456, "int32", "CDAB")
    async with RtuLine([u]) as line:
        args = [
            "--serial",
            line.path,
            "--baud",
            "19200",
            "--parity",
            "N",  # a Linux PTY refuses parity settings (termios EINVAL)
            "--unit",
            "17",
            "--register",
            "100",
        ]
        code, out, _ = await cli(*args, "--type", "int32", "--order", "CDAB", "--json")
        assert code == 0 and json.loads(out)["value"] == -123456
        code, out, _ = await cli(*args, "--type", "int32", "--json")  # wrong order: another number
        assert code == 0 and json.loads(out)["value"] != -123456


async def test_timeout_says_what_to_check() -> None:
    async with RtuLine([UnitSim(1, holding={0: 1}, silent=True)]) as line:
        args = [
            "--serial",
            line.path,
            "--baud",
            "9600",
            "--unit",
            "1",
            "--register",
            "0",
            "--type",
            "uint16",
        ]
        code, out, err = await cli(*args, "--timeout", "0.2")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: no answer from unit 1 on ")
    assert (
        "within 0.2 s" in err and "A/B" in err and "baud rate, parity" in err and "unit id" in err
    )


async def test_crc_error_and_exception_messages() -> None:
    bad_crc = UnitSim(2, holding={0: 1}, corrupt_crc=True)
    refuses = UnitSim(3, holding={0: 1})
    async with RtuLine([bad_crc, refuses]) as line:
        base = ["--serial", line.path, "--baud", "9600", "--type", "uint16", "--timeout", "0.2"]
        code, _, err = await cli(*base, "--unit", "2", "--register", "0")
        assert code == 1 and "failed its CRC check" in err
        code, _, err = await cli(*base, "--unit", "3", "--register", "0x0040")
    assert code == 1
    assert err.strip() == (
        "error: unit 3 answered exception 02 (illegal data address): "
        "the register does not exist on this device: check the address and --function"
    )


async def test_tcp_read_and_exception() -> None:
    meter = EnergyMeterSim(1, "sdm630", luminaires=10, rated_power=100.0)
    async with TcpServer([meter], gateway=True) as server:
        target = f"127.0.0.1:{server.port}"
        code, out, err = await cli(
            "--tcp",
            target,
            "--unit",
            "1",
            "--register",
            "0x34",
            "--function",
            "input",
            "--type",
            "float32",
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["value"] == pytest.approx(1000.0)
        code, _, err = await cli(
            "--tcp", target, "--unit", "9", "--register", "0", "--type", "uint16"
        )
    assert code == 1 and "exception 0B (gateway target device failed to respond)" in err


async def test_tcp_nobody_listening() -> None:
    async with TcpServer([]) as server:
        port = server.port
    code, _, err = await cli(
        "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--register", "0", "--type", "uint16"
    )
    assert code == 1 and err.startswith(f"error: cannot open 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--unit", "1", "--register", "0", "--type", "uint16"],
            "one of the arguments --serial --tcp",
        ),
        (
            ["--serial", "/dev/x", "--unit", "1", "--register", "0", "--type", "uint16"],
            "--baud is required",
        ),
        (
            [
                "--tcp",
                "h:502",
                "--serial",
                "/dev/x",
                "--unit",
                "1",
                "--register",
                "0",
                "--type",
                "uint16",
            ],
            "not allowed",
        ),
        (["--tcp", "host", "--unit", "1", "--register", "0", "--type", "uint16"], "HOST:PORT"),
        (["--tcp", "h:502", "--unit", "0", "--register", "0", "--type", "uint16"], "broadcast"),
        (
            ["--tcp", "h:502", "--unit", "1", "--register", "0x10000", "--type", "uint16"],
            "out of 0..65535",
        ),
        (
            ["--tcp", "h:502", "--unit", "1", "--register", "zz", "--type", "uint16"],
            "not an address",
        ),
        (["--tcp", "h:502", "--unit", "1", "--register", "0", "--type", "int8"], "invalid choice"),
        (
            [
                "--tcp",
                "h:502",
                "--unit",
                "1",
                "--register",
                "0",
                "--type",
                "uint16",
                "--order",
                "ABDC",
            ],
            "invalid choice",
        ),
        (
            [
                "--tcp",
                "h:502",
                "--unit",
                "1",
                "--register",
                "0",
                "--type",
                "uint16",
                "--timeout",
                "0",
            ],
            "must be > 0",
        ),
        (
            [
                "--tcp",
                "h:502",
                "--baud",
                "9600",
                "--unit",
                "1",
                "--register",
                "0",
                "--type",
                "uint16",
            ],
            "only applies",
        ),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert read_cli.main(args) == 2
    assert message in capsys.readouterr().err


async def test_bad_arguments_exit_2_as_a_process() -> None:
    code, out, err = await cli("--tcp", "h:502", "--unit", "1", "--register", "0")
    assert code == 2 and out == "" and "--type" in err
