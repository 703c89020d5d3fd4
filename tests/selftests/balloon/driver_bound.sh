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
	# DEFLATE_ON_OOM (2), PAGE_POISON (4) and REPORTING (5) are not implemented yet: they must
	# not be negotiated. STATS_VQ (1) is, for the queue numbering; FREE_PAGE_HINT (3) is
	# implemented.
	bits=$(for b in 2 4 5; do feature_bit "$dev" $b; done | tr -d '\n')
	ktap_check "no unimplemented balloon feature negotiated (bits 2, 4, 5: $bits)" [ "$bits" = 000 ]
else
	ktap_test_skip "no unimplemented balloon feature negotiated" "only for virtio_balloon_rs"
fi
ktap_finished
