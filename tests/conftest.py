"""Test-session set-up shared by every test module.

A shell that starts a job in the background without job control (`.ci/run &` from a script)
sets SIGINT to "ignore", and every child inherits that, so the Ctrl-C tests would see a `jcw`
that cannot be interrupted. The tests stand for a user at a terminal, where Ctrl-C is never
ignored: handling SIGINT in this process resets it to the default in each child at exec.
"""
import signal

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
