#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The device can be unbound from and bound again to $DRIVER through sysfs.
. ./ktap_helpers.sh
ktap_print_header
ktap_set_plan 3
dev=$(balloon_dev)
drv=/sys/bus/virtio/drivers/$DRIVER
total0=$(grep MemTotal /proc/meminfo)
echo "$dev" > "$drv/unbind"
ktap_check "unbind $dev" [ ! -e "$drv/$dev" ]
echo "$dev" > "$drv/bind"
ktap_check "bind $dev again" [ -e "$drv/$dev" ]
ktap_check "MemTotal unchanged" [ "$(grep MemTotal /proc/meminfo)" = "$total0" ]
ktap_finished
