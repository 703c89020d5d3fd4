#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# virtio_balloon_rs shows its counters in debugfs, consistent with an empty balloon.
. ./ktap_helpers.sh
ktap_print_header
ktap_set_plan 3
if [ "$DRIVER" != virtio_balloon_rs ]; then
	for t in "debugfs directory" "counters present" "empty balloon"; do
		ktap_test_skip "$t" "only for virtio_balloon_rs"
	done
	ktap_finished
fi
dev=$(balloon_dev)
dir=/sys/kernel/debug/virtio_balloon_rs/$dev
ktap_check "debugfs directory $dir" [ -d "$dir" ]
missing=
for f in pages target inflated deflated inflate_descs deflate_descs kicks alloc_ns host_wait_ns \
	blocks alloc_failures floor_stops config_changes host_errors; do
	[ -r "$dir/$f" ] || missing="$missing $f"
done
ktap_check "counters present${missing:+ (missing:$missing)}" [ -z "$missing" ]
ktap_check "empty balloon: pages=0 target=0" [ "$(cat $dir/pages)/$(cat $dir/target)" = 0/0 ]
ktap_finished
