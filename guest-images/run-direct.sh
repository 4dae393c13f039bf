#!/usr/bin/env bash
# Boot the Catenary guest kernel + initramfs directly under QEMU TCG (-M microvm, no ACPI):
# the reference boot that Catenary's microVM boot is compared against (`cargo xtask bench vm`).
#
#   guest-images/run-direct.sh [options] KERNEL INITRD
#
#   KERNEL        vmlinux (PVH entry) or bzImage (Linux boot protocol)
#   INITRD        initramfs.cpio.gz from build-initramfs.sh
#   --cmd CMD     shell command for the guest (passed as catenary.cmd=<base64>); default: demo
#   --append S    extra kernel command line words
#   --base S      the command line's base words (default: Catenary's, catenary_vmm::LINUX_CMDLINE:
#                 "console=hvc0 panic=-1 reboot=k tsc=reliable io_delay=none"); `cargo xtask bench vm` passes it
#   --legacy      only 8259 PIC + 8254 PIT + RTC, no local APIC / IO-APIC
#                 (QEMU -cpu max,-apic; guest cmdline adds nolapic noapic)
#   --like-catenary  the machine a one-vCPU Catenary microVM gives the guest, as far as QEMU
#                 allows, with the command line unchanged (`cargo xtask bench vm` passes it):
#                 8259 + 8254 + RTC, and -cpu max minus what catenary_vmm::cpuid hides (local
#                 APIC, MONITOR, SVM, MCE/MCA, RDTSCP, leaf 6, leaf 0xb, 7.0 ECX/EDX, XSAVE
#                 components past AVX, XGETBV1, 3DNow!, CR8 legacy, ext. leaves past 0x8000_0008)
#   --mem M       guest RAM (default 256M)
#   --timeout S   kill QEMU after S seconds (default 120) and fail
#   --quiet       don't echo the guest console
#   --repeat N    boot N times (quietly) and print each ready time and the median:
#                   run-direct: median_ready_ms=<ms> runs=N ready_ms=<a,b,c,...>
#
# The guest console goes to stdout: the virtio console (hvc0, a virtconsole on QEMU's
# virtio-serial-device, as under Catenary) when the base words say console=hvc0, else the 16550
# (ttyS0). The i8042 is there for reboot=k (QEMU's -no-reboot then exits). At the end one summary line is printed:
#   run-direct: ready_ms=<ms from QEMU start to `catenary-init: ready`> exit_status=<N> qemu_rc=<rc>
# The script exits 0 only if the guest printed `catenary-init: ready`, an exit status line, and
# QEMU terminated by itself (the guest powered off / reset).
#
# Environment: QEMU (default qemu-system-x86_64), CATENARY_TSC_KHZ (guest TSC kHz; default:
# the host's TSC frequency, which is what QEMU TCG's RDTSC counts at), RUN_DIRECT_LOG (keep the
# guest console there; `cargo xtask bench vm` sets it), RUN_DIRECT_TIMES (write every console
# line there as `<us since QEMU start> <line>`, the arrival time the bash reader saw; `bench vm`
# sets it for its boot-phase breakdown).
set -euo pipefail

die() { echo "run-direct.sh: error: $*" >&2; exit 2; }

CMD=
BASE="console=hvc0 panic=-1 reboot=k tsc=reliable io_delay=none"
APPEND=
LEGACY=0
LIKE_CATENARY=0
MEM=256M
TIMEOUT=120
QUIET=0
REPEAT=1
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --cmd) CMD=$2; shift 2 ;;
        --append) APPEND="$APPEND $2"; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --legacy) LEGACY=1; shift ;;
        --like-catenary) LIKE_CATENARY=1; shift ;;
        --mem) MEM=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        --repeat) REPEAT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 2 ] || die "usage: $0 [options] KERNEL INITRD (see --help)"
KERNEL=$1
INITRD=$2
[ -f "$KERNEL" ] || die "kernel $KERNEL not found (guest-images/build-kernel.sh OUTDIR)"
[ -f "$INITRD" ] || die "initrd $INITRD not found (guest-images/build-initramfs.sh OUTDIR)"
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null 2>&1 || die "$QEMU not found: install the Debian package 'qemu-system-x86'"

if [ "$REPEAT" -gt 1 ]; then
    # Re-run this script once per boot, without --repeat, and take the median.
    args=()
    skip=0
    for a in "${ORIG_ARGS[@]}"; do
        if [ $skip = 1 ]; then skip=0; continue; fi
        if [ "$a" = --repeat ]; then skip=1; continue; fi
        args+=("$a")
    done
    times=()
    for i in $(seq "$REPEAT"); do
        line=$("$0" --quiet "${args[@]}" | tail -n1) || die "boot $i failed: $line"
        t=$(sed -n 's/.*ready_ms=\([0-9]*\).*/\1/p' <<<"$line")
        echo "run-direct: boot $i: ready_ms=$t" >&2
        times+=("$t")
    done
    sorted=($(printf '%s\n' "${times[@]}" | sort -n))
    n=${#sorted[@]}
    if [ $((n % 2)) = 1 ]; then median=${sorted[$((n / 2))]}
    else median=$(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
    echo "run-direct: median_ready_ms=$median runs=$n ready_ms=$(IFS=,; echo "${times[*]}")"
    exit 0
fi

host_tsc_khz() {
    local mhz
    # The kernel's own measurement of the host TSC, if we may read the log.
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)
    [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n1)
    [ -n "$mhz" ] || mhz=$(awk -F: '/^cpu MHz/ {gsub(/ /, "", $2); print $2; exit}' /proc/cpuinfo)
    [ -n "$mhz" ] || mhz=2000
    awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}
TSC_KHZ=${CATENARY_TSC_KHZ:-$(host_tsc_khz)}

# The guest command line Catenary gives its microVMs (catenary_vmm::LINUX_CMDLINE), the same
# exit mode as `cargo xtask bench vm` asks of the node, then the TSC frequency (under Catenary
# the node appends it; QEMU's microvm appends the virtio_mmio.device= words itself).
CMDLINE="$BASE catenary.exit=reboot"   # QEMU (-no-reboot) exits on reset, not on cli;hlt
MACHINE="microvm,acpi=off"
CONSOLE=(-serial stdio)
case " $BASE " in
    *" console=hvc0 "*)
        CONSOLE=(-serial null -device virtio-serial-device -chardev stdio,id=con,signal=off -device virtconsole,chardev=con) ;;
esac
CPU=max
if [ $LEGACY = 1 ]; then
    MACHINE="$MACHINE,pic=on,pit=on,rtc=on"
    CPU="max,-apic,-x2apic"
    CMDLINE="$CMDLINE nolapic noapic"
fi
if [ $LIKE_CATENARY = 1 ]; then
    # What the guest sees under Catenary (catenary_vmm::cpuid's allowlist applied to QEMU TCG's
    # -cpu max, checked by diffing both guests' /proc/cpuinfo flags: docs/vmm.md "Like for
    # like"): no local APIC (so no APIC timer calibration, the 8259 + PIT as under Catenary),
    # no MONITOR/SVM/MCE/MCA/ACPI/SS/RDTSCP/3DNow!/CR8 legacy, leaf 6 without ARAT, leaf 7 EBX
    # without MPX/PCOMMIT and ECX without PKU/PKS/UMIP/VAES/LA57, XSAVE x87|SSE|AVX with XSAVEOPT
    # only, no PMU leaf, no topology leaf 0xb, extended leaves up to 0x8000_0008. The microvm
    # machine keeps its I/O APIC (Linux ignores it without a local APIC) and its firmware's MP
    # table; Catenary's guest has neither.
    MACHINE="$MACHINE,pic=on,pit=on,rtc=on"
    CPU="max,-apic,-x2apic,-tsc-deadline,-monitor,-svm,-mce,-mca,-acpi,-ss,-rdtscp,-3dnow,-3dnowext,-cr8legacy,-arat,-mpx,-pcommit,-pku,-pks,-umip,-vaes,-la57,-xgetbv1,pmu=off,cpuid-0xb=off,xlevel=0x80000008"
fi
if [ -n "$CMD" ]; then
    CMDLINE="$CMDLINE catenary.cmd=$(printf '%s' "$CMD" | base64 -w0)"
fi
CMDLINE="$CMDLINE tsc_early_khz=$TSC_KHZ${APPEND}"

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
[ -z "${RUN_DIRECT_TIMES:-}" ] || : >"$RUN_DIRECT_TIMES"

start=$EPOCHREALTIME
ready_ms=
set +e
timeout --foreground "$TIMEOUT" "$QEMU" -M "$MACHINE" -cpu "$CPU" -m "$MEM" -smp 1 \
    -nodefaults -no-user-config -nographic -no-reboot \
    "${CONSOLE[@]}" -device i8042 -monitor none \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE" </dev/null 2>&1 |
while IFS= read -r line; do
    line=${line%$'\r'}
    if [ -n "${RUN_DIRECT_TIMES:-}" ]; then
        now=$EPOCHREALTIME
        echo "$(( ${now/./} - ${start/./} )) $line" >>"$RUN_DIRECT_TIMES"
    fi
    case "$line" in
        *"catenary-init: ready"*)
            now=$EPOCHREALTIME
            echo "READY_US $(( (${now/./} - ${start/./}) ))" >>"$LOG" ;;
    esac
    echo "$line" >>"$LOG"
    [ $QUIET = 1 ] || printf '%s\n' "$line"
done
rcs=("${PIPESTATUS[@]}")
set -e
qemu_rc=${rcs[0]}

ready_us=$(sed -n 's/^READY_US //p' "$LOG" | head -n1)
[ -n "$ready_us" ] && ready_ms=$(( ready_us / 1000 ))
status=$(sed -n 's/.*catenary-init: exit status \([0-9]*\).*/\1/p' "$LOG" | tail -n1)
# The guest's own view of its command line (bench vm compares it with the Catenary guest's).
[ -z "${RUN_DIRECT_LOG:-}" ] || cp "$LOG" "$RUN_DIRECT_LOG"
guest_cmdline=$(sed -n 's/.*catenary-demo: cmdline: //p' "$LOG" | head -n1)
echo "run-direct: cmdline=$guest_cmdline"
echo "run-direct: ready_ms=${ready_ms:-none} exit_status=${status:-none} qemu_rc=$qemu_rc"
[ -n "$ready_ms" ] && [ -n "$status" ] && [ "$qemu_rc" = 0 ] || exit 1
