#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs the guest-side tests listed in kselftest-list.txt, kselftest style: a KTAP plan with one
# result per test program, each program's own KTAP output nested below it with "# ".
# Usage (in the guest): DRIVER=virtio_balloon_rs|virtio_balloon ./run_kselftest.sh
cd "$(dirname "$0")" || exit 1
list=$(cat kselftest-list.txt)
n=$(echo "$list" | grep -c .)
echo "TAP version 13"
echo "1..$n"
i=0
rc_all=0
for entry in $list; do
	i=$((i + 1))
	coll=${entry%%:*}
	prog=${entry#*:}
	echo "# selftests: $coll: $prog"
	out=$(cd "$coll" && timeout 120 sh "./$prog" 2>&1)
	rc=$?
	echo "$out" | sed 's/^/# /'
	if [ $rc -eq 0 ]; then
		echo "ok $i selftests: $coll: $prog"
	elif [ $rc -eq 4 ]; then
		echo "ok $i selftests: $coll: $prog # SKIP"
	else
		echo "not ok $i selftests: $coll: $prog # exit=$rc"
		rc_all=1
	fi
done
exit $rc_all
