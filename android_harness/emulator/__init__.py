"""The emulated phone: the device side of the ADB protocol over a sandbox directory.

Use `EmulatedPhone` (a context manager) from Python, or `jcw emulate` from the shell.
"""
from .auth import AndroidPublicKey, AuthPolicy, KeyFormatError, load_authorized_keys
from .faults import Faults
from .phone import DescriptionError, Phone
from .server import EmulatedPhone, EmulatorError

__all__ = ["AndroidPublicKey", "AuthPolicy", "DescriptionError", "EmulatedPhone", "EmulatorError",
           "Faults", "KeyFormatError", "Phone", "load_authorized_keys"]
