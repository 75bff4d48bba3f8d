"""``iris-trio node``: run an overlay node as a process, serving the Iris relay
protocol to local clients (Iris client libraries, :func:`iris_trio.connect`).

It prints one JSON line when ready (relay port, node id, address, monitor,
peers, the relay's limits) and, with ``--status-interval``, a JSON status line
periodically; with ``--monitor`` it serves its figures over HTTP, in the node's
own task tree (see :mod:`iris_trio.monitor`). SIGINT or SIGTERM make it close
every client (CLOSE with a reason), leave the overlay gracefully and exit 0.
Every flag has an environment variable (IRIS_TRIO_*); a flag given on the
command line wins. The relay's limits (:class:`~iris_trio.relay.RelayLimits`)
are set with ``--relay-limit NAME=VALUE`` (repeatable) or
``IRIS_TRIO_RELAY_LIMITS``.

Mistakes (a port in use, an address that is not this host's, a missing key
file, an invalid environment value...) are reported in one or two lines on
stderr, checked before anything starts where possible; see ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import functools
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import Callable
from typing import Any, Final

import trio

from ._command import (
    INTERRUPTED,
    CommandParser,
    byte_size,
    format_bytes,
    host_port,
    interrupted,
    leaves,
    port_number,
    seconds,
)
from ._logformat import configure_logging, parse_log_format, parse_log_level
from ._node import Node
from ._serve import serve_node
from .crypto.identity import NodeIdentity
from .crypto.keys import DEV_NETWORK, Network, NetworkKey
from .errors import ConfigError, KeyFormatError
from .monitor import DEFAULT_MONITOR_PORT, MonitorAddressError, monitor_of
from .overlay.driver import split_address
from .patterns.limits import MAX_COUNT, MAX_TIMEOUT
from .relay import DEFAULT_PORT, Relay, RelayLimits, serve_relay

__all__ = ["main"]

_PROG: Final = "iris-trio node"

_DESCRIPTION: Final = """\
Run one overlay node as a process and serve the Iris relay protocol on loopback,
so that programs on this host (the Iris client libraries, iris_trio.connect and
iris_trio.register) use the overlay through it.

Without --net the node joins the dev network: loopback only, found by the other
dev nodes on this host, with a published key that is not secret. With --net NAME
and --key FILE (or --rsa FILE) it joins a real network: it listens on all
interfaces and finds its peers on the LAN."""

_EPILOG: Final = """\
output:
  stdout  one JSON line when ready: {"event": "ready", "relay_port": ..., "node_id": ...,
          "address": ..., "monitor": ..., "peers": ..., "relay_limits": {...}}; a JSON
          status line every --status-interval seconds; {"event": "stopped", ...} at the end
  stderr  log records (--log-level, --log-format) and error messages

stopping:
  SIGINT (Ctrl-C) or SIGTERM: every client gets CLOSE with a reason, the node
  leaves the overlay gracefully, and the process exits with status 0.

exit status:
  0 stopped by a signal; 1 could not start (a port in use, an address that is not
  this host's, an unreadable key file...: the message says what to do);
  2 invalid arguments or environment values; 130 interrupted before it was ready.

environment:
  Every flag has a variable; a flag given on the command line wins:
  IRIS_TRIO_DEV (1/true/yes or 0/false/no), IRIS_TRIO_NET, IRIS_TRIO_KEY, IRIS_TRIO_RSA,
  IRIS_TRIO_LISTEN, IRIS_TRIO_PORT, IRIS_TRIO_SEEDS (comma-separated), IRIS_TRIO_DISCOVERY,
  IRIS_TRIO_IDENTITY, IRIS_TRIO_STATUS_INTERVAL, IRIS_TRIO_MONITOR, IRIS_TRIO_LOG_LEVEL,
  IRIS_TRIO_LOG_FORMAT, IRIS_TRIO_RELAY_LIMITS (NAME=VALUE,NAME=VALUE; a --relay-limit wins
  for its NAME).
  IRIS_TRIO_TRACEBACK=1 prints the traceback of an unexpected error (for a bug report)."""

_EXAMPLES: Final = f"""\
examples:
  iris-trio node --dev --status-interval 1        the dev network, relay on port {DEFAULT_PORT}
  iris-trio node --dev --port 0                   a second node on this host
  iris-trio node --dev --monitor                  with its monitor: iris-trio status, top
  iris-trio node --dev --relay-limit subscriptions=64 --relay-limit total_buffered_bytes=1GiB
  iris-trio keygen net.key && iris-trio node --net prod --key net.key --listen 10.0.0.5:0"""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_DISCOVERY: Final = ("loopback", "lan", "off")


class _UserError(Exception):
    """A user mistake: the message says what is wrong and what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------ argument types


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a yes/no value; use 1, true, yes or 0, false, no"
    )


def _discovery(text: str) -> str:
    value = text.strip().lower()
    if value not in _DISCOVERY:
        raise argparse.ArgumentTypeError(
            f"unknown discovery mode {text!r}; use loopback, lan or off"
        )
    return value


def _seed(text: str) -> str:
    address = host_port(text)
    if split_address(address)[1] == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a seed is the HOST:PORT a node listens on, and port 0 is none"
        )
    return address


def _monitor_address(text: str) -> str | None:
    """HOST:PORT, or a bare PORT on 127.0.0.1 (the monitor binds loopback unless
    told); empty (an IRIS_TRIO_MONITOR set to nothing): no monitor."""
    text = text.strip()
    if not text:
        return None
    return host_port(f"127.0.0.1:{text}" if text.isdigit() else text)


def _log_level(text: str) -> str:
    try:
        parse_log_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lower()


def _log_format(text: str) -> str:
    try:
        return parse_log_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seeds(text: str) -> list[str]:
    return [_seed(s) for s in text.split(",") if s.strip()]


def _text(text: str) -> str | None:
    return text or None


# ------------------------------------------------------------ relay limits

_RELAY_LIMITS_VARIABLE: Final = "IRIS_TRIO_RELAY_LIMITS"
#: RelayLimits' fields by name, in their order.
_LIMITS: Final = {field.name: field for field in dataclasses.fields(RelayLimits)}


def _limit_kind(name: str) -> str:
    """How a RelayLimits field is written: "seconds" (a float field), "bytes"
    (an int field named ``*bytes``, ``*_window`` or ``*_message``) or "count"."""
    if isinstance(_LIMITS[name].default, float):
        return "seconds"
    return "bytes" if name.endswith(("bytes", "_window", "_message")) else "count"


def _limit_value(name: str, text: str) -> int | float:
    """The value of the limit ``name`` written as ``text``.

    Raises:
        argparse.ArgumentTypeError: it is not a value of that kind, or out of range.
    """
    kind = _limit_kind(name)
    if kind == "seconds":
        try:
            value = float(text.strip().removesuffix("s"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds ({name} is a time)"
            ) from None
        if not 0 < value <= MAX_TIMEOUT:  # NaN fails this too
            raise argparse.ArgumentTypeError(
                f"{name} must be more than 0 and at most {MAX_TIMEOUT:g} seconds, not {text}"
            )
        return value
    if kind == "bytes":
        number = byte_size(text)
        most = MAX_COUNT if not name.endswith("bytes") else None
    else:
        try:
            number = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number ({name} is a count)"
            ) from None
        most = MAX_COUNT
    if most is not None and number > most:
        raise argparse.ArgumentTypeError(f"{name} must be at most {most}, not {number}")
    return number


def _limit_setting(spec: str, source: str) -> tuple[str, int | float]:
    """One NAME=VALUE of ``source`` (the flag or the variable) as (field, value).

    Raises:
        _UserError: an unknown name, or a value the limit does not take (status 2).
    """
    name, equals, text = spec.partition("=")
    name = name.strip().lower().replace("-", "_")
    if not equals or not name or not text.strip():
        raise _UserError(
            f"{source} {spec!r} is not NAME=VALUE (e.g. subscriptions=512 or "
            "total_buffered_bytes=128MiB; the names are in --help)",
            status=2,
        )
    if name not in _LIMITS:
        near = difflib.get_close_matches(name, _LIMITS, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise _UserError(
            f"{source} {spec.strip()!r}: no relay limit is called {name!r}; {hint}the "
            f"limits are {', '.join(_LIMITS)}",
            status=2,
        )
    try:
        value = _limit_value(name, text)
        RelayLimits(**{name: value})  # type: ignore[arg-type]  # its own checks
    except (argparse.ArgumentTypeError, ConfigError) as exc:
        raise _UserError(f"{source} {spec.strip()!r}: {exc}", status=2) from None
    return name, value


def _relay_limits(flags: list[str] | None) -> RelayLimits:
    """The relay's limits: its defaults, then IRIS_TRIO_RELAY_LIMITS, then each
    --relay-limit (the last one of a name wins).

    Raises:
        _UserError: an unknown name or an invalid value (status 2).
    """
    settings: dict[str, int | float] = {}
    variable = os.environ.get(_RELAY_LIMITS_VARIABLE, "")
    for spec in variable.split(","):
        if spec.strip():
            name, value = _limit_setting(spec, _RELAY_LIMITS_VARIABLE)
            settings[name] = value
    for spec in flags or ():
        name, value = _limit_setting(spec, "--relay-limit")
        settings[name] = value
    try:
        return RelayLimits(**settings)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise _UserError(f"relay limits: {exc}", status=2) from None


def _show_limit(name: str, value: float) -> str:
    """A limit's value as the flag takes it (``4MiB``, ``10s``, ``1024``)."""
    kind = _limit_kind(name)
    if kind == "seconds":
        return f"{value:g}s"
    return format_bytes(int(value)) if kind == "bytes" else str(value)


def _limit_descriptions() -> dict[str, str]:
    """Each limit's description, from RelayLimits' docstring (its Attributes)."""
    described: dict[str, str] = {}
    current = None
    in_attributes = False
    for line in (RelayLimits.__doc__ or "").splitlines():
        text = line.strip()
        if text.endswith(":") and " " not in text:  # a section: Attributes:, Raises:
            in_attributes = text == "Attributes:"
            current = None
            continue
        if not in_attributes or not text:
            continue
        name, colon, rest = text.partition(": ")
        if colon and name in _LIMITS:
            current = name
            described[name] = rest
        elif current is not None:
            described[current] += " " + text
    return described


def _limits_help() -> str:
    """The "relay limits" section of --help: every limit, its default and meaning."""
    defaults = RelayLimits()
    descriptions = _limit_descriptions()
    width = max(map(len, _LIMITS))
    lines = [
        "relay limits:",
        "  --relay-limit NAME=VALUE (repeatable) or IRIS_TRIO_RELAY_LIMITS=NAME=VALUE,...",
        "  (the flag wins for its NAME). Counts are whole numbers, sizes bytes (65536,",
        "  64KiB, 16MiB, 1GiB), times seconds. total_* and connections count for all",
        "  relay clients together, the others per client connection (docs/relay.md).",
        f"  {'NAME':{width}}  DEFAULT",
    ]
    for name in _LIMITS:
        shown = f"  {name:{width}}  {_show_limit(name, getattr(defaults, name)):8}"
        meaning = descriptions.get(name, "")
        wrapped = textwrap.wrap(meaning, 88 - len(shown) - 1) or [""]
        lines.append(f"{shown} {wrapped[0]}".rstrip())
        lines += [" " * (len(shown) + 1) + more for more in wrapped[1:]]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class _Option:
    dest: str
    flag: str
    variable: str
    convert: Callable[[str], Any]
    default: Any


_OPTIONS: Final = (
    _Option("dev", "--dev", "IRIS_TRIO_DEV", _boolean, False),
    _Option("net", "--net", "IRIS_TRIO_NET", _text, None),
    _Option("key", "--key", "IRIS_TRIO_KEY", _text, None),
    _Option("rsa", "--rsa", "IRIS_TRIO_RSA", _text, None),
    _Option("listen", "--listen", "IRIS_TRIO_LISTEN", host_port, None),
    _Option("port", "--port", "IRIS_TRIO_PORT", port_number, DEFAULT_PORT),
    _Option("seed", "--seed", "IRIS_TRIO_SEEDS", _seeds, []),
    _Option("discovery", "--discovery", "IRIS_TRIO_DISCOVERY", _discovery, None),
    _Option("identity", "--identity", "IRIS_TRIO_IDENTITY", _text, None),
    _Option("status_interval", "--status-interval", "IRIS_TRIO_STATUS_INTERVAL", seconds, 0.0),
    _Option("monitor", "--monitor", "IRIS_TRIO_MONITOR", _monitor_address, None),
    _Option("log_level", "--log-level", "IRIS_TRIO_LOG_LEVEL", _log_level, "warning"),
    _Option("log_format", "--log-format", "IRIS_TRIO_LOG_FORMAT", _log_format, "text"),
)


def _parser() -> CommandParser:
    epilog = f"{_EPILOG}\n\n{_limits_help()}\n\n{_EXAMPLES}"
    parser = CommandParser(prog=_PROG, description=_DESCRIPTION, epilog=epilog)
    add = parser.add_argument
    add(
        "--dev",
        action="store_true",
        default=None,
        help="join the dev network: loopback only, published key (the default without --net)",
    )
    add("--net", metavar="NAME", help="join the real network NAME (needs --key or --rsa)")
    add(
        "--key",
        metavar="FILE",
        help="the network key file: 32 raw bytes, 64 hex digits or base64 "
        "(create one with 'iris-trio keygen FILE')",
    )
    add(
        "--rsa",
        metavar="FILE",
        help="derive the network key from an Iris RSA private key file (PEM or DER) instead",
    )
    add(
        "--listen",
        metavar="HOST:PORT",
        type=host_port,
        help="where to accept links from other nodes (default 127.0.0.1:0 on the dev "
        "network, 0.0.0.0:0 on a real one; port 0: any free port)",
    )
    add(
        "--port",
        metavar="N",
        type=port_number,
        help=f"the relay port on loopback (127.0.0.1 and ::1) for local programs (default "
        f"{DEFAULT_PORT}, the Iris port; 0: any free port, shown in the ready line)",
    )
    add(
        "--seed",
        metavar="HOST:PORT",
        action="append",
        type=_seed,
        help="the link address of a node to join through, as its ready line shows it (repeatable)",
    )
    add(
        "--discovery",
        metavar="MODE",
        type=_discovery,
        help="how to find peers: loopback (the dev network's default), lan (a real "
        "network's default; not on the dev network) or off (seeds only)",
    )
    add(
        "--identity",
        metavar="FILE",
        help="keep the node's key pair, and so its node id, in FILE across restarts "
        "(created if missing; default: a new identity at every start)",
    )
    add(
        "--status-interval",
        metavar="SECONDS",
        type=seconds,
        help="print a JSON status line every SECONDS (default 0: never)",
    )
    add(
        "--monitor",
        metavar="HOST:PORT",
        nargs="?",
        const=f"127.0.0.1:{DEFAULT_MONITOR_PORT}",
        type=_monitor_address,
        help="serve the node's monitor over HTTP there: /healthz, /status (JSON), /metrics "
        "(Prometheus) and / (a live dashboard), read-only; a bare PORT means "
        f"127.0.0.1:PORT; no value: 127.0.0.1:{DEFAULT_MONITOR_PORT}, where 'iris-trio "
        "status' looks; port 0: any free port, shown in the ready line (default: none)",
    )
    add(
        "--relay-limit",
        metavar="NAME=VALUE",
        action="append",
        help="set one of the relay's limits (repeatable): NAME is a limit listed under "
        "'relay limits' below, VALUE a count, a size (65536, 64KiB, 16MiB, 1GiB) or "
        "seconds; e.g. --relay-limit subscriptions=512 (default: the limits shown there)",
    )
    add(
        "--log-level",
        metavar="LEVEL",
        type=_log_level,
        help="debug, info, warning or error, any case (default warning: only problems, "
        "so a healthy node stays quiet; info adds the node's life: ready, peers "
        "joining and leaving)",
    )
    add(
        "--log-format",
        metavar="FORMAT",
        type=_log_format,
        help="text (default: readable lines) or json (one JSON object per line on stderr "
        "with time, level, logger, message and exception, for log collectors)",
    )
    return parser


def _resolve(args: argparse.Namespace) -> dict[str, str]:
    """Fill every option not given on the command line from its environment
    variable or default; returns where each value came from (for messages)."""
    sources: dict[str, str] = {}
    for option in _OPTIONS:
        if getattr(args, option.dest) is not None:
            sources[option.dest] = option.flag
            continue
        text = os.environ.get(option.variable)
        if text is None:
            setattr(args, option.dest, option.default)
            sources[option.dest] = option.flag
            continue
        try:
            value = option.convert(text)
        except argparse.ArgumentTypeError as exc:
            raise _UserError(f"{option.variable}: {exc}", status=2) from None
        setattr(args, option.dest, option.default if value is None else value)
        sources[option.dest] = option.variable
    return sources


# ------------------------------------------------------------ up-front checks


def _network(args: argparse.Namespace, sources: dict[str, str]) -> Network:
    if args.dev and args.net:
        raise _UserError(
            f"{sources['dev']} and {sources['net']} exclude each other: --dev is the "
            "loopback-only dev network, --net NAME a real network (with --key or --rsa)",
            status=2,
        )
    if not args.net:
        if args.key or args.rsa:
            given = sources["key"] if args.key else sources["rsa"]
            raise _UserError(
                f"{given} is for a real network: add --net NAME (the dev network's "
                "key is built in)",
                status=2,
            )
        if args.discovery == "lan":
            raise _UserError(
                f"{sources['discovery']} lan needs a real network (--net NAME with --key "
                "FILE); the dev network is loopback only: use --discovery loopback or off",
                status=2,
            )
        return DEV_NETWORK
    if not args.key and not args.rsa:
        raise _UserError(
            f"the network {args.net!r} needs its key: add --key FILE (or --rsa FILE); "
            "'iris-trio keygen FILE' creates one (or use --dev)",
            status=2,
        )
    if args.key and args.rsa:
        raise _UserError("give one of --key or --rsa, not both", status=2)
    key = _key(args.key, sources["key"], rsa=False) if args.key else None
    key = key or _key(args.rsa, sources["rsa"], rsa=True)
    try:
        return Network(args.net, key)
    except KeyFormatError as exc:
        raise _UserError(f"{sources['net']} {args.net!r}: {exc}", status=2) from None


def _key(path: str, source: str, *, rsa: bool) -> NetworkKey:
    try:
        return NetworkKey.from_rsa_file(path) if rsa else NetworkKey.from_file(path)
    except FileNotFoundError:
        if rsa:
            raise _UserError(f"{source} {path}: no such file") from None
        raise _UserError(
            f"{source} {path}: no such file; create a key with 'iris-trio keygen {path}' "
            "and give every node of the network a copy"
        ) from None
    except OSError as exc:
        raise _UserError(f"{source} {path}: cannot read it ({exc.strerror or exc})") from None
    except KeyFormatError as exc:
        if rsa:
            raise _UserError(f"{source} {path}: not a usable RSA private key ({exc})") from None
        raise _UserError(
            f"{source} {path}: not a network key (a key file holds 32 raw bytes, 64 hex "
            "digits or base64 of 32 bytes; 'iris-trio keygen NEWFILE' creates one)"
        ) from None


def _identity(path: str | None, source: str) -> NodeIdentity:
    if path is None:
        return NodeIdentity.generate()
    try:
        if os.path.lexists(path):
            return NodeIdentity.load(path)
    except KeyFormatError:
        raise _UserError(
            f"{source} {path}: not an identity file (it holds 64 hex digits, written by "
            "iris-trio node); name a new file to create a new identity"
        ) from None
    except OSError as exc:
        raise _UserError(f"{source} {path}: cannot read it ({exc.strerror or exc})") from None
    identity = NodeIdentity.generate()
    try:
        identity.save(path)
    except OSError as exc:
        raise _UserError(f"{source} {path}: cannot create it ({exc.strerror or exc})") from None
    return identity


def _bind_problem(exc: OSError, address: str, what: str, advice: str) -> str:
    """The message for a failure to listen on ``address``."""
    monitor = what == "monitor address"
    if isinstance(exc, socket.gaierror):
        host = split_address(address)[0] if ":" in address else address
        return (
            f"cannot listen on {address}: host {host!r} not found ({exc.strerror}); use an "
            "address of this host (127.0.0.1 for loopback, 0.0.0.0 for all of them)"
        )
    code = exc.errno
    if code == errno.EADDRINUSE:
        return f"{what} {address} is in use (another node running?): {advice}"
    if code == errno.EADDRNOTAVAIL and monitor:
        return (
            f"cannot listen on {address}: that address is not one of this host's; use "
            "127.0.0.1:PORT (loopback), or an address of this host to let others read it"
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {address}: that address is not one of this host's; "
            "use an address of this host, or 0.0.0.0:0 for all of them "
            "(127.0.0.1:0 on the dev network)"
        )
    if code == errno.EACCES:
        return (
            f"cannot listen on {address}: permission denied (ports below 1024 need "
            f"privileges); {advice}"
        )
    return f"cannot listen on {address}: {exc.strerror or exc}; {advice}"


def _listen_advice(address: str) -> str:
    host = split_address(address)[0]
    shown = f"[{host}]" if ":" in host else host
    return f"use --listen {shown}:0 for any free port"


def _monitor_advice(address: str) -> str:
    host = split_address(address)[0]
    shown = f"[{host}]" if ":" in host else host
    return f"use --monitor {shown}:0 for any free port"


def _relay_advice() -> str:
    return "use --port 0 for any free port, or another --port N"


def _probe(family: socket.AddressFamily, sockaddr: Any) -> None:
    """Bind a throwaway socket as trio's listeners do (SO_REUSEADDR, v6 only)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)


def _check_listen(address: str, what: str = "link address", advice: str | None = None) -> None:
    """Refuse an address this host cannot listen on, before anything starts."""
    host, port = split_address(address)
    advice = advice or _listen_advice(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise _UserError(_bind_problem(exc, address, what, advice)) from None
    for family, _, _, _, sockaddr in infos:
        try:
            _probe(family, sockaddr)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue  # trio skips address families this host lacks
            raise _UserError(_bind_problem(exc, address, what, advice)) from None


def _check_relay_port(port: int) -> None:
    """Refuse a relay port another program holds on 127.0.0.1 or ::1 (the relay
    would otherwise serve on the other address only, and clients would reach
    the other program)."""
    if port == 0:
        return
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            _probe(family, (host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _UserError(
                    f"relay port {port} is in use (another node running?): {_relay_advice()}"
                ) from None
            if family == socket.AF_INET6:
                continue  # no IPv6 loopback here: the relay does without it
            raise _UserError(
                _bind_problem(exc, f"127.0.0.1:{port}", "relay port", _relay_advice())
            ) from None


# ------------------------------------------------------------ running


class _StartError(Exception):
    """The node or its relay could not start; the message says why and what to do."""


def _cause(exc: BaseException) -> BaseException:
    """The exception behind ``exc``: inside groups of one, and behind the
    InternalError the node wraps its own tasks' failures in."""
    while True:
        inner = leaves(exc)
        if len(inner) == 1 and inner[0] is not exc:
            exc = inner[0]
        elif type(exc).__name__ == "InternalError" and exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            return exc


def _start_problem(exc: BaseException, address: str | None) -> str | None:
    """The message for the node (or its monitor) failing to start with ``exc``,
    or None for a bug."""
    cause = _cause(exc)
    if isinstance(cause, ConfigError):
        return str(cause)
    if isinstance(cause, MonitorAddressError):
        error = cause.__cause__ if isinstance(cause.__cause__, OSError) else cause
        return _bind_problem(
            error, cause.address, "monitor address", _monitor_advice(cause.address)
        )
    if isinstance(cause, OSError):
        shown = address or "the default link address"
        advice = _listen_advice(address) if address else "give one with --listen HOST:PORT"
        return _bind_problem(cause, shown, "link address", advice)
    return None


def _relay_problem(exc: BaseException, port: int) -> str | None:
    """The message for the relay failing to start with ``exc``, or None for a bug."""
    cause = _cause(exc)
    if not isinstance(cause, OSError):
        return None
    if cause.errno == errno.EADDRINUSE or os.strerror(errno.EADDRINUSE) in str(cause):
        return f"relay port {port} is in use (another node running?): {_relay_advice()}"
    return f"{cause}; {_relay_advice()}"


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def _status(node: Node, relay: Relay) -> dict[str, Any]:
    figures = node.statistics()
    return {
        "event": "status",
        "node_id": figures.node_id,
        "address": node.address,
        "joined": figures.joined,
        "leaves_right": list(figures.leaves_right),
        "leaves_left": list(figures.leaves_left),
        "peers": figures.peers,
        "table_entries": figures.table_entries,
        "peers_declared_dead": figures.peers_declared_dead,
        "patterns": {
            field: value
            for field, value in dataclasses.asdict(figures).items()
            if field not in _OVERLAY_FIELDS
        },
        "relay": dataclasses.asdict(relay.statistics()),
    }


#: NodeStatistics fields the status line shows at its top level.
_OVERLAY_FIELDS = frozenset(
    {"node_id", "joined", "leaves_right", "leaves_left", "peers", "table_entries"}
    | {"peers_declared_dead"}
)


async def _run(args: argparse.Namespace, network: Network, identity: NodeIdentity) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                node: Node = await nursery.start(
                    functools.partial(
                        serve_node,
                        network=None if network.is_dev else network,
                        listen=args.listen,
                        seeds=list(args.seed),
                        discovery=args.discovery,
                        identity=identity,
                        monitor=args.monitor,
                    )
                )
            except Exception as exc:
                message = _start_problem(exc, args.listen)
                if message is None:
                    raise
                raise _StartError(message) from exc
            node_id = node.statistics().node_id
            async with trio.open_nursery() as clients:
                try:
                    relay: Relay = await clients.start(
                        functools.partial(serve_relay, node, args.port, limits=args.relay_limits)
                    )
                except Exception as exc:
                    message = _relay_problem(exc, args.port)
                    if message is None:
                        raise
                    raise _StartError(message) from exc
                monitor = monitor_of(node)
                if monitor is not None:
                    monitor.relay = relay  # its figures and clients shown too
                _emit(
                    {
                        "event": "ready",
                        "relay_port": relay.port,
                        "node_id": node_id,
                        "address": node.address,
                        "monitor": node.monitor_url,
                        "network": network.name,
                        "discovery": args.discovery or ("loopback" if network.is_dev else "lan"),
                        "peers": node.statistics().peers,
                        "relay_limits": dataclasses.asdict(relay.limits),
                    }
                )
                if args.status_interval > 0:
                    clients.start_soon(_report, node, relay, args.status_interval)
                async for _ in signals:
                    break
                clients.cancel_scope.cancel()  # every client gets CLOSE first
            nursery.cancel_scope.cancel()  # then the node leaves the overlay gracefully
    _emit({"event": "stopped", "node_id": node_id})


async def _report(node: Node, relay: Relay, interval: float) -> None:
    while True:
        _emit(_status(node, relay))
        await trio.sleep(interval)


def _prepare(argv: list[str]) -> tuple[argparse.Namespace, Network, NodeIdentity]:
    """Parse and check everything that can be checked before the node starts."""
    args = _parser().parse_args(argv)
    sources = _resolve(args)
    args.relay_limits = _relay_limits(args.relay_limit)
    configure_logging(args.log_level, args.log_format)
    network = _network(args, sources)
    if args.listen is not None:
        _check_listen(args.listen)
    _check_relay_port(args.port)
    if args.monitor is not None:
        _check_listen(args.monitor, "monitor address", _monitor_advice(args.monitor))
    identity = _identity(args.identity, sources["identity"])
    return args, network, identity


def main(argv: list[str]) -> int:
    """Entry point of ``iris-trio node``; returns the exit status."""
    try:
        args, network, identity = _prepare(argv)
    except _UserError as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return exc.status
    try:
        trio.run(_run, args, network, identity)
    except BaseException as exc:
        failures = [leaf for leaf in leaves(exc) if isinstance(leaf, _StartError)]
        if failures:
            print(f"{_PROG}: {failures[0]}", file=sys.stderr)
            return 1
        if interrupted(exc):
            print(f"{_PROG}: interrupted before it was ready", file=sys.stderr)
            return INTERRUPTED
        raise
    return 0
