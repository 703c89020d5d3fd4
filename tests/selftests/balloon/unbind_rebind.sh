#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The device can be unbound from and bound again to $DRIVER through sysfs (with an inflated
# balloon, which only the host can ask for, in the unbind_rebind_inflated scenario).
. ./ktap_helpers.sh
ktap_print_header
ktap_set_plan 2
dev=$(balloon_dev)
drv=/sys/bus/virtio/drivers/$DRIVER
echo "$dev" > "$drv/unbind"
ktap_check "unbind $dev" [ ! -e "$drv/$dev" ]
echo "$dev" > "$drv/bind"
ktap_check "bind $dev again" [ -e "$drv/$dev" ]
ktap_finished
