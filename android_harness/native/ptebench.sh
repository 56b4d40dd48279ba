#!/system/bin/sh
# Launches the glibc-linked ptebench (the .pte runner) with the loader and libraries shipped beside
# it, so it runs from any directory on Android (bionic) without touching the system.
# CONVBENCH_EMULATOR (unset on phones; shared with convbench.sh) lets an emulated phone prefix
# qemu-aarch64-static.
DIR=${0%/*}
[ "$DIR" = "$0" ] && DIR=.
exec $CONVBENCH_EMULATOR "$DIR/ld-linux-aarch64.so.1" --library-path "$DIR" "$DIR/ptebench" "$@"
