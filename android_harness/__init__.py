"""Talking to a device: the native convbench runner, its builds, ADB transports and the emulated phone.

Speaks runner plan and result lines (see ARCHITECTURE.md); knows nothing about sampling or learning.
"""
