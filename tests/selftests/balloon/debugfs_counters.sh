#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# virtio_balloon_rs shows its counters in debugfs, consistent with an empty balloon.
. ./ktap_helpers.sh
ktap_print_header
ktap_set_plan 4
if [ "$DRIVER" != virtio_balloon_rs ]; then
	for t in "debugfs directory" "counters present" "empty balloon" "hint_min_order writable"; do
		ktap_test_skip "$t" "only for virtio_balloon_rs"
	done
	ktap_finished
fi
dev=$(balloon_dev)
dir=/sys/kernel/debug/virtio_balloon_rs/$dev
ktap_check "debugfs directory $dir" [ -d "$dir" ]
missing=
for f in pages target inflated deflated inflate_descs deflate_descs kicks alloc_ns host_wait_ns \
	blocks alloc_failures floor_stops config_changes host_errors hint_rounds hint_ended hint_aborts \
	hint_done hint_descs hint_ranges hint_pages hint_round_ns hint_round_ns_total \
	hint_lock_max_ns hint_lock_holds hint_lock_ns_total hint_low_zones hint_skipped hint_unsent \
	hint_isolated hint_isolated_max hint_bound buffers_made stats_requests stats_sent freezes restores \
	page_ranges ranges_min_order block_order record_buffers record_bytes record_pages record_runs \
	record_bitmaps record_lists range_len_1 range_len_2_7 range_len_8_63 range_len_64_511 \
	range_len_512_4095 range_len_4096_up hint_min_order; do
	[ -r "$dir/$f" ] || missing="$missing $f"
done
ktap_check "counters present${missing:+ (missing:$missing)}" [ -z "$missing" ]
ktap_check "empty balloon: pages=0 target=0" [ "$(cat $dir/pages)/$(cat $dir/target)" = 0/0 ]
old=$(cat $dir/hint_min_order)
echo 9 > $dir/hint_min_order
new=$(cat $dir/hint_min_order)
echo "$old" > $dir/hint_min_order
ktap_check "hint_min_order writable (0 -> 9 -> $(cat $dir/hint_min_order))" [ "$old/$new" = 0/9 ]
ktap_finished
