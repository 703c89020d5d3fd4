#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The driver under test ($DRIVER) is bound to the balloon device and negotiated only features it
# implements.
. ./ktap_helpers.sh
ktap_print_header
ktap_set_plan 3
dev=$(balloon_dev)
ktap_check "a virtio balloon device exists" [ -n "$dev" ]
ktap_check "$DRIVER is bound to ${dev:-the device}" [ -e "/sys/bus/virtio/drivers/$DRIVER/$dev" ]
if [ "$DRIVER" = virtio_balloon_rs ]; then
	# Features 1-5 are not implemented yet: they must not be negotiated.
	bits=$(for b in 1 2 3 4 5; do feature_bit "$dev" $b; done | tr -d '\n')
	ktap_check "no unimplemented balloon feature negotiated (bits 1-5: $bits)" [ "$bits" = 00000 ]
else
	ktap_test_skip "no unimplemented balloon feature negotiated" "only for virtio_balloon_rs"
fi
ktap_finished
