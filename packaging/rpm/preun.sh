# %preun of the xray-daemon .rpm ($1: 0 = erase, 1 = upgrade).
# On erase: stop and disable xray.service (a stop flushes buffered segments first).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now xray.service >/dev/null 2>&1 || :
fi
exit 0
