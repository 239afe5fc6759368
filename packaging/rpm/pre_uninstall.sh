# %preun: on erase ($1 = 0) stop and disable the agent. An upgrade ($1 = 1) leaves a running
# agent alone: restarting it would be a failover; restart the nodes one at a time.
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now redis-steward.service >/dev/null 2>&1 || :
fi
exit 0
