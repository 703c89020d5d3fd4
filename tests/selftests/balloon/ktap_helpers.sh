# SPDX-License-Identifier: GPL-2.0
# KTAP output helpers for the balloon selftests (busybox sh), after
# tools/testing/selftests/kselftest/ktap_helpers.sh.
KTAP_TESTNO=1
KTAP_PASS=0
KTAP_FAIL=0
KTAP_SKIP=0
KSFT_PASS=0
KSFT_FAIL=1
KSFT_SKIP=4

ktap_print_header() { echo "TAP version 13"; }
ktap_set_plan() { echo "1..$1"; }
ktap_print_msg() { echo "# $*"; }
ktap_test_pass() {
	echo "ok $KTAP_TESTNO $1"
	KTAP_TESTNO=$((KTAP_TESTNO + 1)); KTAP_PASS=$((KTAP_PASS + 1))
}
ktap_test_fail() {
	echo "not ok $KTAP_TESTNO $1"
	KTAP_TESTNO=$((KTAP_TESTNO + 1)); KTAP_FAIL=$((KTAP_FAIL + 1))
}
ktap_test_skip() {
	echo "ok $KTAP_TESTNO $1 # SKIP $2"
	KTAP_TESTNO=$((KTAP_TESTNO + 1)); KTAP_SKIP=$((KTAP_SKIP + 1))
}
# ktap_check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
ktap_check() {
	desc=$1
	shift
	if "$@"; then ktap_test_pass "$desc"; else ktap_test_fail "$desc"; fi
}
ktap_finished() {
	echo "# Totals: pass:$KTAP_PASS fail:$KTAP_FAIL xfail:0 xpass:0 skip:$KTAP_SKIP error:0"
	[ "$KTAP_FAIL" -eq 0 ] && exit $KSFT_PASS
	exit $KSFT_FAIL
}
# The virtio balloon device (virtio device id 5), e.g. virtio0.
balloon_dev() {
	for d in /sys/bus/virtio/devices/*; do
		[ "$(cat "$d/device")" = 0x0005 ] && { echo "${d##*/}"; return 0; }
	done
	return 1
}
# Feature bit N of a virtio device as negotiated (0 or 1).
feature_bit() { cut -c$(($2 + 1)) "/sys/bus/virtio/devices/$1/features"; }
