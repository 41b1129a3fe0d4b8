# %post of the xray-daemon .rpm ($1: 1 = install, 2 = upgrade).
# Like the Go daemon's package: enable and start xray.service on a fresh install; on an
# upgrade the %postun scriptlet restarts it once the old files are gone. Nothing happens
# when systemd is not running (containers, image builds).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable xray.service >/dev/null 2>&1 || :
        systemctl start xray.service >/dev/null 2>&1 || :
    fi
fi
exit 0
