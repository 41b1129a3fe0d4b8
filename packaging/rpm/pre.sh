# %pre of the xray-daemon .rpm ($1: 1 = install, 2 = upgrade).
# Creates the `xray` system user and group (no home, no login shell) that xray.service runs
# as, before the files are laid down. Never fails the transaction for an existing user.
getent group xray >/dev/null 2>&1 || groupadd --system xray
getent passwd xray >/dev/null 2>&1 || \
    useradd --system --gid xray --no-create-home --home-dir /nonexistent \
        --shell /sbin/nologin --comment "AWS X-Ray daemon" xray
exit 0
