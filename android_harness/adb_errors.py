"""The ADB-specific device errors, each a one-sentence DeviceError, and the translation of
adb-shell, libusb and socket exceptions into them.

Nothing here talks to a device; adb_transport and adb_device raise what `translate` returns.
"""
from __future__ import annotations

import errno
import socket

from adb_shell import exceptions as adb_exc

from jcw.android_harness.device import DeviceDisconnected, DeviceError, DeviceNotFound

try:  # libusb1 comes with adb-shell[usb]; TCP still works without it
    import usb1
except ImportError:  # pragma: no cover - depends on the installation
    usb1 = None


class DeviceUnauthorized(DeviceError):
    """The phone has not (yet) accepted this computer's ADB key."""

    def __init__(self, address: str):
        super().__init__(
            f"The device at {address} did not authorize this computer: unlock the phone, "
            f"accept the \"Allow USB debugging?\" prompt (tick \"Always allow\") and try again.")


class UsbInterfaceBusy(DeviceError):
    """Another program, usually the adb server, has claimed the phone's ADB interface."""

    def __init__(self, address: str):
        super().__init__(
            f"The USB ADB interface of {address} is held by another program, usually the adb "
            f"server: run `adb kill-server` and try again.")


class UsbAccessDenied(DeviceError):
    """The USB device node is not accessible to this user."""

    def __init__(self, address: str):
        super().__init__(
            f"This user may not open the USB device {address}: add a udev rule for the phone "
            f"(or the user to the plugdev group) and replug the cable.")


class NotArm64(DeviceError):
    """The phone's primary ABI is not arm64-v8a, so the bundled runner cannot run there."""

    def __init__(self, address: str, abi: str):
        super().__init__(
            f"The device at {address} reports ABI {abi or 'unknown'}, but the jcw runner needs "
            f"an arm64 (arm64-v8a / aarch64) phone.")


class DeviceDirNotWritable(DeviceError):
    """The working directory on the phone cannot be written."""

    def __init__(self, address: str, path: str):
        super().__init__(
            f"{path} on the device at {address} is not writable, so the runner cannot be "
            f"installed there; check its permissions with `adb shell ls -ld {path}`.")


class DeviceDiskFull(DeviceError):
    """The phone's data partition has no room left for the runner or a plan."""

    def __init__(self, address: str, path: str):
        super().__init__(
            f"The device at {address} has no space left for {path}: free some storage on the "
            f"phone and try again.")


class ConnectionLost(Exception):
    """Internal signal: the ADB connection broke; AdbDevice reconnects or raises DeviceDisconnected."""


_NO_SPACE_MARKERS = ("no space left", "enospc", "disk full", "out of space")
_NOT_WRITABLE_MARKERS = ("permission denied", "read-only file system", "eacces", "erofs")


def message_says_disk_full(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _NO_SPACE_MARKERS)


def message_says_not_writable(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _NOT_WRITABLE_MARKERS)


def usb_error_of(exc: BaseException):
    """The libusb error inside `exc` (adb-shell wraps some of them), or None."""
    if usb1 is None:
        return None
    if isinstance(exc, usb1.USBError):
        return exc
    inner = getattr(exc, "usb_error", None)
    return inner if isinstance(inner, usb1.USBError) else None


def translate_connect_error(exc: BaseException, address: str, key_offered: bool) -> DeviceError:
    """Map an exception raised while opening a connection to the sentence the user needs.

    `key_offered` is true once the client has sent its public key: a failure after that
    point means the phone did not accept the key (prompt refused or never answered).
    """
    if isinstance(exc, DeviceError):
        return exc
    usb_error = usb_error_of(exc)
    if usb_error is not None:
        if isinstance(usb_error, usb1.USBErrorBusy):
            return UsbInterfaceBusy(address)
        if isinstance(usb_error, usb1.USBErrorAccess):
            return UsbAccessDenied(address)
        if isinstance(usb_error, (usb1.USBErrorNoDevice, usb1.USBErrorNotFound)):
            return DeviceNotFound(f"No ADB device is attached as {address}; check the cable and "
                                  f"that USB debugging is enabled.")
    if isinstance(exc, adb_exc.UsbDeviceNotFoundError):
        return DeviceNotFound(f"No ADB device is attached as {address}; check the cable, that USB "
                              f"debugging is enabled, and the serial shown by `jcw devices`.")
    if isinstance(exc, adb_exc.DeviceAuthError) or key_offered:
        return DeviceUnauthorized(address)
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or (
            isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                       errno.ENETUNREACH, errno.EADDRNOTAVAIL)):
        return DeviceNotFound(f"No device answers at {address}; check the address and that the "
                              f"phone is listening for ADB (`adb tcpip 5555`).")
    if isinstance(exc, (adb_exc.TcpTimeoutException, adb_exc.AdbTimeoutError, socket.timeout,
                        TimeoutError)):
        return DeviceNotFound(f"The device at {address} did not answer the ADB handshake in time; "
                              f"check the address and that it is an ADB device.")
    if isinstance(exc, ConnectionLost):
        return DeviceNotFound(f"The device at {address} closed the connection during the ADB "
                              f"handshake; check that it is an ADB device and not already in use.")
    return DeviceNotFound(f"Could not open an ADB connection to {address} ({_short(exc)}).")


def is_connection_loss(exc: BaseException) -> bool:
    """True for exceptions that mean the link itself broke (so reconnecting may help)."""
    if isinstance(exc, ConnectionLost):
        return True
    if usb_error_of(exc) is not None or isinstance(exc, (adb_exc.UsbReadFailedError,
                                                         adb_exc.UsbWriteFailedError)):
        return True
    return isinstance(exc, (OSError, adb_exc.TcpTimeoutException, adb_exc.AdbTimeoutError,
                            adb_exc.InvalidChecksumError, adb_exc.InvalidCommandError,
                            adb_exc.InvalidResponseError, adb_exc.AdbConnectionError))


def disconnected(address: str, detail: str) -> DeviceDisconnected:
    """DeviceDisconnected with a short cause; callers that keep results add how to resume."""
    return DeviceDisconnected(f"Lost the connection to {address} ({detail.rstrip('.')}).")


def short_reason(exc: BaseException) -> str:
    """A few words for why a reconnection attempt failed, to nest inside another sentence."""
    if isinstance(exc, DeviceNotFound):
        return "nothing answers at that address"
    if isinstance(exc, ConnectionLost):
        return str(exc) or "the link broke again"
    return type(exc).__name__


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
