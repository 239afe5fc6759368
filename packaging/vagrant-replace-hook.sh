#!/bin/sh
# The Vagrant testbed's replacement hook (config: hooks.on_node_lost). The primary's agent
# runs it when another node of its data store stays unreachable, with REDIS_STEWARD_SLOT
# (the lost node's slot name, e.g. node-2), REDIS_STEWARD_LAST_ADDRESS and
# REDIS_STEWARD_PLAN in its environment. A VM cannot recreate itself from inside, so the
# hook prints the command that does it on the host, to stdout and to the journal
# (`journalctl -t vagrant-replace-hook`: the agent keeps a successful hook's output to
# itself); a real deployment would call its provisioning API here instead.
set -eu

slot=${REDIS_STEWARD_SLOT:?REDIS_STEWARD_SLOT is not set}
case "$slot" in
node-[0-9] | node-[0-9][0-9]) ;; # the VMs are named after their slots
*)
    echo "vagrant-replace-hook: slot '$slot' is not a Vagrant testbed node (node-N)" >&2
    exit 1
    ;;
esac
msg="replace ${slot} (last seen at ${REDIS_STEWARD_LAST_ADDRESS:-unknown}, plan ${REDIS_STEWARD_PLAN:-unknown}): on the host, run: vagrant destroy -f ${slot} && vagrant up ${slot}"
echo "$msg"
if command -v logger >/dev/null; then
    logger -t vagrant-replace-hook -p daemon.warning -- "$msg" || true
fi
