# %postun of the xray-daemon .rpm ($1: 0 = erase, 1 = upgrade).
# Reload systemd's view of the unit; after an upgrade, restart a running daemon so that it
# runs the new binary.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart xray.service >/dev/null 2>&1 || :
    fi
fi
exit 0
