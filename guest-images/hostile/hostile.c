/*
 * hostile: attack the hypervisor from inside a Linux microVM, as root in guest userland.
 *
 * This is test code for Catenary's hostile-guest tests (xtask: vm_linux_hostile_userland). It
 * plays the attacker, so it is deliberately wild; everything it touches is the guest's own
 * virtual hardware, and the hypervisor must survive all of it with at most this VM ending.
 *
 *   hostile ports N          N pseudo-random port reads/writes over the whole 64 Ki port space
 *                            (sparing the reset ports and the devices this guest's kernel runs
 *                            on, so it lives on to the next phase), plus string I/O
 *                            (rep outsb/insb) with odd counts
 *   hostile virtio           every virtio-mmio device named on /proc/cmdline: bogus queue
 *                            sizes and descriptor/avail/used addresses (outside guest RAM,
 *                            unaligned, wrapping), queue ready + notify, random register writes
 *   hostile flood SECONDS    write to the serial console (/dev/ttyS0) as fast as possible
 *   hostile wild GPA         read then write guest-physical GPA through /dev/mem (no device
 *                            there: the hypervisor ends the VM, reporting the GPA)
 *
 * Each phase prints `hostile: PHASE done ...` when it returns, so the test can tell how far the
 * guest got. Build: gcc -static -O2 (guest-images/build-initramfs.sh).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Ports left alone so that this guest's own kernel keeps running and the later phases still
 * run: the ones whose writes reset or power off the VM, and the devices the guest kernel runs on
 * (PIC + ELCR, PIT + port 0x61, CMOS/NMI mask, the console UART). Scribbling on those only
 * breaks this guest itself; the in-kernel hostile guests (vm_hostile_garbage_io) and the
 * port_sequence fuzz target attack them directly. An access of `size` bytes at `p` touches
 * ports p..p+size-1. */
static int touches_spared_port(unsigned p, unsigned size) {
    static const unsigned spared[][2] = {
        {0x64, 0x64}, {0x92, 0x92}, {0xcf9, 0xcf9}, {0x604, 0x604}, {0xb004, 0xb004}, {0x4004, 0x4004},
        {0x20, 0x21}, {0xa0, 0xa1}, {0x4d0, 0x4d1}, {0x40, 0x43}, {0x61, 0x61}, {0x70, 0x71}, {0x3f8, 0x3ff},
    };
    for (unsigned i = 0; i < sizeof spared / sizeof spared[0]; i++)
        if (p <= spared[i][1] && spared[i][0] < p + size) return 1;
    return 0;
}

static int phase_ports(long n) {
    if (iopl(3) != 0) {
        fprintf(stderr, "hostile: iopl: %s\n", strerror(errno));
        return 1;
    }
    long outs = 0, ins = 0, strs = 0;
    static unsigned char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)next();
    for (long i = 0; i < n; i++) {
        uint64_t r = next();
        unsigned port = (unsigned)(r & 0xffff);
        /* Half the accesses go to the low 1 KiB where the emulated devices live. */
        if (r & (1ull << 20)) port &= 0x3ff;
        unsigned kind = (r >> 16) & 7;
        unsigned size = (kind == 1 || kind == 4) ? 2 : (kind == 2 || kind == 5) ? 4 : 1;
        if (touches_spared_port(port, size)) continue;
        switch (kind) {
        case 0: outb((unsigned char)(r >> 24), port); outs++; break;
        case 1: outw((unsigned short)(r >> 24), port); outs++; break;
        case 2: outl((unsigned)(r >> 24), port); outs++; break;
        case 3: (void)inb(port); ins++; break;
        case 4: (void)inw(port); ins++; break;
        case 5: (void)inl(port); ins++; break;
        case 6: outsb(port, buf, 1 + (unsigned)((r >> 32) % sizeof buf)); strs++; break;
        case 7: insb(port, buf, 1 + (unsigned)((r >> 32) % sizeof buf)); strs++; break;
        }
    }
    printf("hostile: ports done (%ld out, %ld in, %ld string)\n", outs, ins, strs);
    return 0;
}

/* virtio-mmio register offsets (virtio 1.x, section 4.2.2). */
enum {
    QueueSel = 0x030, QueueNumMax = 0x034, QueueNum = 0x038, QueueReady = 0x044,
    QueueNotify = 0x050, Status = 0x070, QueueDescLow = 0x080, QueueDescHigh = 0x084,
    QueueAvailLow = 0x090, QueueAvailHigh = 0x094, QueueUsedLow = 0x0a0, QueueUsedHigh = 0x0a4,
};

static void w32(volatile uint32_t *base, unsigned off, uint32_t v) { base[off / 4] = v; }

static int phase_virtio(void) {
    char cmdline[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0 || read(fd, cmdline, sizeof cmdline - 1) < 0) return 1;
    close(fd);
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0) {
        fprintf(stderr, "hostile: /dev/mem: %s\n", strerror(errno));
        return 1;
    }
    int devices = 0;
    long writes = 0;
    /* The bogus addresses: past any guest RAM, unaligned, wrapping at the top, zero. */
    static const uint64_t bogus[] = {
        0xfffffffffffff000ull, 0x0000fffffffff000ull, 0x00000000fee00000ull, 0x7ull,
        0x0000000100000000ull, 0ull, 0x00000000ffffffffull, 0x0000000040000003ull,
    };
    for (char *p = strstr(cmdline, "virtio_mmio.device="); p; p = strstr(p + 1, "virtio_mmio.device=")) {
        /* virtio_mmio.device=<size>@<base>:<irq> with size like 4K or 0x1000. */
        char *at = strchr(p, '@');
        if (!at) continue;
        unsigned long long base = strtoull(at + 1, NULL, 0);
        volatile uint32_t *regs = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)base);
        if (regs == MAP_FAILED) {
            fprintf(stderr, "hostile: mmap %#llx: %s\n", base, strerror(errno));
            continue;
        }
        devices++;
        for (unsigned q = 0; q < 4; q++) {
            for (unsigned k = 0; k < sizeof bogus / sizeof bogus[0]; k++) {
                uint64_t a = bogus[k], b = bogus[(k + 3) % 8], c = bogus[(k + 5) % 8];
                w32(regs, QueueSel, q);
                w32(regs, QueueReady, 0);
                w32(regs, QueueNum, (uint32_t)next() | (k & 1 ? 0x8000 : 0));
                w32(regs, QueueDescLow, (uint32_t)a);
                w32(regs, QueueDescHigh, (uint32_t)(a >> 32));
                w32(regs, QueueAvailLow, (uint32_t)b);
                w32(regs, QueueAvailHigh, (uint32_t)(b >> 32));
                w32(regs, QueueUsedLow, (uint32_t)c);
                w32(regs, QueueUsedHigh, (uint32_t)(c >> 32));
                w32(regs, QueueReady, 1);
                w32(regs, QueueNotify, q);
                writes += 11;
            }
        }
        /* Random writes over the whole register window, then a device reset. */
        for (int i = 0; i < 2000; i++) {
            uint64_t r = next();
            w32(regs, (unsigned)(r % 0x100) & ~3u, (uint32_t)(r >> 32));
            writes++;
        }
        w32(regs, Status, 0);
        munmap((void *)regs, 4096);
    }
    close(mem);
    printf("hostile: virtio done (%d devices, %ld register writes)\n", devices, writes);
    return devices > 0 ? 0 : 1;
}

static int phase_flood(double secs) {
    int fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
    if (fd < 0) {
        fprintf(stderr, "hostile: /dev/ttyS0: %s\n", strerror(errno));
        return 1;
    }
    static char line[4096];
    for (size_t i = 0; i < sizeof line; i++) line[i] = "catenary-console-flood-"[i % 23];
    line[sizeof line - 1] = '\n';
    long long bytes = 0;
    double end = now() + secs;
    while (now() < end) {
        ssize_t n = write(fd, line, sizeof line);
        if (n > 0) bytes += n;
    }
    close(fd);
    printf("hostile: flood done (%lld bytes in %.0f s)\n", bytes, secs);
    return 0;
}

static int phase_wild(unsigned long long gpa) {
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0) {
        fprintf(stderr, "hostile: /dev/mem: %s\n", strerror(errno));
        return 1;
    }
    volatile uint32_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)(gpa & ~0xfffull));
    if (p == MAP_FAILED) {
        fprintf(stderr, "hostile: mmap %#llx: %s\n", gpa, strerror(errno));
        return 1;
    }
    printf("hostile: wild access to %#llx\n", gpa);
    fflush(stdout);
    uint32_t v = p[(gpa & 0xfff) / 4];
    p[(gpa & 0xfff) / 4] = v ^ 0xdeadbeef;
    printf("hostile: wild done (read %#x: the hypervisor let it through)\n", v);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: hostile ports N | virtio | flood SECONDS | wild GPA\n");
        return 2;
    }
    if (!strcmp(argv[1], "ports")) return phase_ports(argc > 2 ? atol(argv[2]) : 100000);
    if (!strcmp(argv[1], "virtio")) return phase_virtio();
    if (!strcmp(argv[1], "flood")) return phase_flood(argc > 2 ? atof(argv[2]) : 5);
    if (!strcmp(argv[1], "wild")) return phase_wild(argc > 2 ? strtoull(argv[2], NULL, 0) : 0xc0000000ull);
    fprintf(stderr, "hostile: unknown phase %s\n", argv[1]);
    return 2;
}
