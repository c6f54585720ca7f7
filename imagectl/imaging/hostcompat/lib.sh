# shared helper: does the *kernel* have device-mapper?
# NOTE: do not test for /dev/mapper/control -- libdevmapper users (e.g. grub-probe
# inside the chroot, which sees the host /dev via bind mount) mknod that node even
# when the kernel has no dm driver.
have_dm() {
    grep -qw device-mapper /proc/misc 2>/dev/null || [ -e /sys/class/misc/device-mapper ]
}
