//! uapp: ring-3 test and benchmark roles (chosen by the kernel via the start argument).
//! Capability slots depend on the role (see hypervisor/kernel/src/task.rs, `Role`).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use catenary_user::*;

const ROLE_ECHO: u64 = 1;
const ROLE_CLIENT: u64 = 2;
const ROLE_BENCH: u64 = 3;
const ROLE_TOUCH_KERNEL: u64 = 4;
const ROLE_BAD_PORT: u64 = 5;
const ROLE_SPIN: u64 = 6;
const ROLE_RTC_CLIENT: u64 = 7;
const ROLE_ONE_SHOT: u64 = 8;
const ROLE_MEMORY: u64 = 9;
const ROLE_GRANT_SERVER: u64 = 10;
const ROLE_GRANT_CLIENT: u64 = 11;
const ROLE_MMIO_DRIVER: u64 = 12;
const ROLE_HOSTILE_ARGS: u64 = 20;
const ROLE_SET_AC: u64 = 21;
const ROLE_SPIN_FOR: u64 = 22;
const ROLE_UDP_ECHO: u64 = 30;
const ROLE_UDP_CLIENT: u64 = 31;
const ROLE_TCP_SERVER: u64 = 32;
const ROLE_TCP_CLIENT: u64 = 33;
const ROLE_TCP_DIER: u64 = 34;
const ROLE_RESTART_CLIENT: u64 = 35;
const ROLE_RESTART_PEER: u64 = 36;
const ROLE_BENCH_CALLS: u64 = 40;
const ROLE_BENCH_NULLS: u64 = 41;
const ROLE_REGS_HOLD: u64 = 42;
const ROLE_FPU_ECHO: u64 = 43;
const ROLE_FPU_CLIENT: u64 = 44;
const ROLE_FPU_DIE: u64 = 45;
const ROLE_FPU_FRESH: u64 = 46;
const ROLE_HANG_ON_CALL: u64 = 47;
const ROLE_SPIN_SLEEP: u64 = 48;
const ROLE_BEAT_SLEEPY: u64 = 49;
const ROLE_BEAT_RECV: u64 = 50;
const ROLE_BEAT_BUSY: u64 = 51;
const ROLE_BEAT_KEEP: u64 = 52;
const ROLE_BEAT_READY: u64 = 53;

#[path = "uapp/restart.rs"]
mod restart;
#[path = "uapp/tcp.rs"]
mod tcp;

/// The kernel's answer to a bad argument.
const BAD: Result<(), u64> = Err(ERR_BAD_ARG);

/// Raw memory syscalls for the kernel's argument tests, through `hostile` (which never lets
/// one unmap or overwrite this program's own memory; see catenary-arch-user).
fn res(r: u64) -> Result<u64, u64> {
    if r < 1 << 63 { Ok(r) } else { Err(r.wrapping_neg()) }
}
fn unmap(virt: u64, pages: u64) -> Result<(), u64> {
    res(hostile::syscall(SYS_UNMAP, [virt, pages, 0, 0, 0, 0])).map(|_| ())
}
fn map(virt: u64, pages: u64) -> Result<(), u64> {
    res(hostile::syscall(SYS_MAP, [virt, pages, 0, 0, 0, 0])).map(|_| ())
}
fn map_mmio(virt: u64, phys: u64, len: u64) -> Result<(), u64> {
    res(hostile::syscall(SYS_MAP_MMIO, [virt, phys, len, 0, 0, 0])).map(|_| ())
}
fn dma_alloc(virt: u64, pages: u64) -> Result<u64, u64> {
    res(hostile::syscall(SYS_DMA_ALLOC, [virt, pages, 0, 0, 0, 0]))
}
fn grant_raw(slot: u64, label: u64, base: u64, len: u64, writable: bool) -> Result<u64, u64> {
    res(hostile::syscall_msg(SYS_CALL_GRANT, slot, label, [0, 0, base | writable as u64, len]))
}

/// ROLE_HOSTILE_ARGS: syscalls with arguments the kernel must refuse (review findings). Each
/// bit of the result is one refusal seen; bits 16.. count the pages the quota let it map.
fn hostile_args(io: u64) -> (u64, u64, u64) {
    const REGS: u64 = 0x3000_0000;
    const HEAP: u64 = 0x4000_0000;
    const KTEXT: u64 = 0xffff_ffff_8020_0000;
    let mut ok = 0u64;
    let mut bit = |i: u32, c: bool| {
        if c {
            ok |= 1 << i;
        }
    };
    // SYS_UNMAP: kernel text (4 KiB pages shared by every address space), the direct map, a
    // non-canonical address (panicked under the kernel lock), the grant window.
    bit(0, unmap(KTEXT, 1) == BAD);
    bit(1, unmap(0x0000_8000_0000_0000, 1) == BAD);
    bit(2, unmap(0xffff_8000_0000_0000, 1) == BAD);
    bit(3, unmap(0x0000_7fff_ffff_f000, u64::MAX) == BAD);
    // SYS_MAP_MMIO: a length whose page count times 4096 wraps to 0 (mapped RAM after the grant).
    bit(4, map_mmio(REGS, io, u64::MAX) == BAD);
    bit(5, map_mmio(REGS, io, 4096).is_ok());
    // SYS_LOG through the granted MMIO page (the kernel read it through the direct map), from
    // kernel memory, and with a wrapping range.
    let log_at = hostile::log_at;
    bit(6, log_at(REGS, 16) == BAD);
    bit(7, log_at(KTEXT, 16) == BAD && log_at(u64::MAX - 3, 16) == BAD && log_at(0x0000_7fff_ffff_fff8, 16) == BAD);
    // SYS_MAP / SYS_DMA_ALLOC with page counts whose byte length overflows.
    bit(8, map(HEAP, 1 << 52) == BAD && map(HEAP, u64::MAX) == BAD && dma_alloc(HEAP, 1 << 52) == BAD.map(|_| 0));
    // SYS_CALL_GRANT of a range that wraps, and of the MMIO page (not RAM the task owns).
    bit(9, grant_raw(0, 1, 0xffff_ffff_ffff_f000, 8192, false).err() == Some(ERR_BAD_ARG));
    bit(10, grant_raw(0, 1, REGS, 4096, false).err() == Some(ERR_BAD_ARG));
    // SYS_UNMAP of the MMIO page is the task's own business; of it again, not.
    bit(11, unmap(REGS, 1).is_ok() && unmap(REGS, 1) == BAD);
    // The memory quota: map 16 pages at a time until the kernel says no.
    let mut pages = 0u64;
    let mut last = Ok(());
    while pages < 4096 {
        last = map(HEAP + pages * 4096, 16);
        if last.is_err() {
            break;
        }
        pages += 16;
    }
    bit(12, last == Err(ERR_NO_MEMORY));
    // Unmapping gives the pages back to the quota.
    bit(13, unmap(HEAP, pages) == Ok(()) && map(HEAP, 16) == Ok(()) && unmap(HEAP, 16) == Ok(()));
    // The ring-3 router's syscall needs the ROUTER right (its own endpoint in slot 0 has
    // receive, not ROUTER; slot 63 is empty); a standing share needs the SHARE right.
    let refused = |r: u64| r >= 1 << 63;
    bit(14, refused(hostile::syscall(SYS_NET, [0, catenary_ipc::netd::OP_REAP, 0, 0, 0, 0])) && refused(hostile::syscall(SYS_NET, [63, catenary_ipc::netd::OP_REAP, 0, 0, 0, 0])));
    bit(15, map(HEAP, 1) == Ok(()) && refused(hostile::syscall(SYS_SHARE, [0, HEAP, 4096, 0, 0, 0])) && unmap(HEAP, 1) == Ok(()));
    (ok, pages, 0)
}

fn checksum(m: &Mem, len: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..len / 8 {
        h = (h ^ m.read_u64(i * 8)).wrapping_mul(0x100_0000_01b3);
    }
    h
}
fn pattern(i: u64, seed: u64) -> u64 {
    (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The socket protocol (catenary-netsock) through `netd`'s endpoint in slot 1: a call with
/// no grant, or with the page at `SOCK_BUF` lent (`len` bytes, writable or not).
const SOCK_BUF: u64 = 0x5000_0000;
fn sock(label: u64, w: [u64; 4]) -> Result<[u64; 4], u64> {
    let m = call(1, label, w).map_err(|e| 0x1000 | e)?;
    if m.label == 0 { Ok(m.words) } else { Err(m.label) }
}
fn sock_grant(buf: &Pages, label: u64, h: u64, len: u64, writable: bool) -> Result<[u64; 4], u64> {
    let m = call_grant(1, label, h, 0, buf, len, writable).map_err(|e| 0x1000 | e)?;
    if m.label == 0 { Ok(m.words) } else { Err(m.label) }
}
fn put_header(buf: &Pages, addr: core::net::Ipv6Addr, port: u16) {
    let mut h = [0u8; 24];
    h[..16].copy_from_slice(&addr.octets());
    h[16..18].copy_from_slice(&port.to_be_bytes());
    buf.write(0, &h);
}
fn header(buf: &Pages) -> (core::net::Ipv6Addr, u16) {
    let mut h = [0u8; 24];
    buf.read(0, &mut h);
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[..16]);
    (core::net::Ipv6Addr::from(a), u16::from_be_bytes([h[16], h[17]]))
}

/// ROLE_UDP_ECHO (`arg` port in the first message): a UDP socket on the node's /128 that
/// sends every datagram back to where it came from.
fn udp_echo(port: u64) -> u64 {
    use catenary_netsock::*;
    let Ok(buf) = Pages::map(SOCK_BUF, 1) else { return 1 };
    let Ok([h, ..]) = sock(OP_SOCKET, [1, 0, 0, 0]) else { return 2 };
    let Ok(_) = sock(OP_BIND, [h, 0, port, 0]) else { return 3 };
    logf!("udp echo: socket {} bound to the node's fabric /128, port {}", catenary_netsock::slot_of(h), port);
    let mut echoed = 0u64;
    loop {
        match sock_grant(&buf, OP_RECV, h, 4096, true) {
            Ok([n, ..]) => {
                let (from, p) = header(&buf);
                if echoed < 3 {
                    logf!("udp echo: {} bytes from [{}]:{}", n - 24, from, p);
                }
                echoed += 1;
                let _ = sock_grant(&buf, OP_SEND, h, n, false);
            }
            Err(e) if e == NetError::WouldBlock.code() => sleep_ns(5_000_000),
            Err(_) => sleep_ns(100_000_000),
        }
    }
}

/// ROLE_UDP_CLIENT: told the peer (/128 high, low, port) in a message on slot 0, sends 3
/// datagrams from an ephemeral port of the node's /128 and waits for each echo; then hostile
/// requests. Exit code: echoes received | refusals seen << 8.
fn udp_client() -> u64 {
    use catenary_netsock::*;
    let Ok(m) = recv(0, 0) else { return 0 };
    let (peer, port) = (addr_of(m.words[0], m.words[1]), m.words[2] as u16);
    let Ok(buf) = Pages::map(SOCK_BUF, 1) else { return 0 };
    let Ok([h, ..]) = sock(OP_SOCKET, [1, 0, 0, 0]) else { return 0 };
    let Ok([local, ..]) = sock(OP_BIND, [h, 0, 0, 0]) else { return 0 };
    logf!("udp client: socket {} on the node's fabric /128, port {}; echoes from [{}]:{}", catenary_netsock::slot_of(h), local, peer, port);
    let mut got = 0u64;
    let t0 = now_ns();
    let mut i = 0u64;
    while got < 3 && now_ns() - t0 < 90_000_000_000 {
        i += 1;
        let mut text = Line::new();
        let _ = core::fmt::Write::write_fmt(&mut text, format_args!("catenary udp datagram {}", got + 1));
        put_header(&buf, peer, port);
        buf.write(24, text.as_str().as_bytes());
        let len = 24 + text.as_str().len() as u64;
        if sock_grant(&buf, OP_SEND, h, len, false).is_err() {
            sleep_ns(200_000_000);
            continue;
        }
        // its echo, within a second (the first may wait for the fabric session)
        let t = now_ns();
        while now_ns() - t < 1_000_000_000 {
            match sock_grant(&buf, OP_RECV, h, 4096, true) {
                Ok([n, ..]) => {
                    let (from, p) = header(&buf);
                    let mut back = [0u8; 64];
                    let k = ((n.saturating_sub(24)) as usize).min(64);
                    buf.read(24, &mut back[..k]);
                    if from == peer && p == port && &back[..k] == text.as_str().as_bytes() {
                        got += 1;
                        logf!("udp client: echo {} from [{}]:{} ({} bytes, {} us)", got, from, p, n - 24, (now_ns() - t) / 1000);
                        break;
                    }
                }
                Err(_) => sleep_ns(5_000_000),
            }
        }
    }
    logf!("udp client: {}/3 echoes ({} datagrams sent)", got, i);
    // hostile requests get errors (and netd lives on: the last call is answered)
    let mut refused = 0u64;
    let mut check = |what: &str, r: Result<[u64; 4], u64>, want: NetError| {
        if r == Err(want.code()) {
            refused += 1;
        }
        logf!("udp client: {} -> {:?} (want {:?})", what, r.map(|w| w[0]).map_err(NetError::from_code), want);
    };
    check("close of a handle never opened", sock(OP_CLOSE, [7, 0, 0, 0]), NetError::BadHandle);
    check("unknown operation", sock(OP_BASE + 0x77, [0; 4]), NetError::UnknownOp);
    check("bind to a reserved port", sock(OP_SOCKET, [1, 0, 0, 0]).and_then(|[s, ..]| sock(OP_BIND, [s, 0, 51900, 0])), NetError::BadPort);
    check("send with words claiming a grant it did not lend", sock(OP_SEND, [h, 0, 0x6000_0000_0000, 4096]), NetError::BadBuffer);
    // two are open (h and the reserved-port one): this many more pass netd's per-client limit
    for _ in 0..SOCKETS_PER_CLIENT {
        let _ = sock(OP_SOCKET, [1, 0, 0, 0]);
    }
    check("a socket past SOCKETS_PER_CLIENT", sock(OP_SOCKET, [1, 0, 0, 0]), NetError::TooManySockets);
    check("close", sock(OP_CLOSE, [h, 0, 0, 0]).map(|_| [0; 4]).and(Err(0)).or_else(|_| sock(OP_CLOSE, [h, 0, 0, 0])), NetError::BadHandle);
    logf!("udp client: {}/6 hostile requests refused as expected", refused);
    got | refused << 8
}

entry!(run);

fn run(role: u64) -> u64 {
    match role {
        // slot 0: own endpoint. Replies to every call with label+1, words+1 (the loop of the
        // node's `echo` service, `echod`; here for the tests that start their own echo task).
        ROLE_ECHO => catenary_user::echo::serve(),
        // slot 0: echo server, slot 1: report endpoint. 200 calls, each checked.
        ROLE_CLIENT => {
            let (mut ok, mut bad) = (0u64, 0u64);
            for i in 0..200u64 {
                match call(0, 7, [i, i * 2, 0, 0]) {
                    Ok(r) if r.label == 8 && r.words[0] == i + 1 && r.words[1] == i * 2 + 1 => ok += 1,
                    _ => bad += 1,
                }
            }
            let _ = send(1, 0x600d, [ok, bad, 0, 0]);
            0
        }
        // slot 0: echo server, slot 1: report endpoint.
        ROLE_BENCH => {
            const N: usize = 2000;
            let mut s = [0u64; N];
            for _ in 0..100 {
                null();
            }
            for x in s.iter_mut() {
                let t = rdtsc();
                null();
                *x = rdtsc() - t;
            }
            let null_med = median(&mut s);
            for _ in 0..100 {
                let _ = call(0, 1, [0; 4]);
            }
            for x in s.iter_mut() {
                let t = rdtsc();
                let _ = call(0, 1, [0; 4]);
                *x = rdtsc() - t;
            }
            let call_med = median(&mut s);
            let _ = send(1, 0xbe, [null_med, call_med, 0, 0]);
            0
        }
        // The benchmark's passes with the kernel's stage accounting on: 100 + 2000 calls or
        // null syscalls only; slot 1: report endpoint (median in word 1).
        ROLE_BENCH_CALLS | ROLE_BENCH_NULLS => {
            const N: usize = 2000;
            let mut s = [0u64; N];
            let op = || if role == ROLE_BENCH_CALLS { call(0, 1, [0; 4]).map(|_| 0).unwrap_or(1) } else { null() };
            for _ in 0..100 {
                op();
            }
            for x in s.iter_mut() {
                let t = rdtsc();
                op();
                *x = rdtsc() - t;
            }
            let med = median(&mut s);
            let _ = send(1, 0xbf, [0, med, 0, 0]);
            0
        }
        // Spin holding patterns in rcx and r11 while being preempted (and yielding now and
        // then): exit 0x600d if they always came back, else 0xbad0000 | turns they did not.
        ROLE_REGS_HOLD => {
            let mut bad = 0u64;
            for round in 0..300u64 {
                bad += regs_hold(0x1234_5678_9abc_def0 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15), 100_000);
                if round % 8 == 0 {
                    yield_now();
                }
            }
            if bad == 0 { 0x600d } else { 0xbad_0000 | bad.min(0xffff) }
        }
        // Echo server holding its own vector-register pattern (and MXCSR) through every
        // reply_recv: the kernel switches straight to the caller and back meanwhile. Slot 0:
        // its endpoint. Each answer carries in word 1 the holds that came back wrong so far.
        ROLE_FPU_ECHO => {
            let seed = rdtsc() ^ 0x5e5e_0000_0000;
            let (mut bad, mut round) = (0u64, 0u64);
            let mut got = recv(0, 0);
            loop {
                let m = match got {
                    Ok(m) if m.reply != 0 => m,
                    _ => {
                        got = recv(0, 0);
                        continue;
                    }
                };
                round += 1;
                let p = fpu::pattern(seed ^ round);
                let (next, h) = fpu::hold_reply_recv(m.reply, m.label + 1, [m.words[0] + 1, bad, 0, 0], 0, &p, seed ^ round, 20_000);
                if !fpu::intact(&h, &p, seed ^ round) {
                    bad += 1;
                }
                got = next;
            }
        }
        // Slot 0: the FPU echo server, slot 1: report endpoint. 150 calls, each made holding a
        // pattern of this task's own (a new one per call) from 1M TSC cycles before the call
        // to 1M after it (timer ticks preempt it; the other client and the server run); the
        // report: label 0x600d, words [calls answered right, own holds broken, the server's
        // holds broken (its last answer), avx].
        ROLE_FPU_CLIENT => {
            let seed = rdtsc() ^ 0xc1c1_0000_0000;
            let (mut ok, mut bad, mut server_bad) = (0u64, 0u64, 0u64);
            for i in 0..150u64 {
                let p = fpu::pattern(seed ^ i);
                let (r, h) = fpu::hold_call(0, 7, [i, 0, 0, 0], &p, seed ^ i, 1_000_000);
                if !fpu::intact(&h, &p, seed ^ i) {
                    bad += 1;
                }
                if let Ok(m) = r {
                    if m.label == 8 && m.words[0] == i + 1 {
                        ok += 1;
                    }
                    server_bad = m.words[1];
                }
            }
            // One more call, plain: the server's count after its hold for the last one.
            if let Ok(m) = call(0, 7, [150, 0, 0, 0]) {
                server_bad = m.words[1];
            }
            let _ = send(1, 0x600d, [ok, bad, server_bad, fpu::avx_usable() as u64]);
            0
        }
        // Dies by UD2 holding fpu::DEAD_SEED's pattern, MXCSR, x87 registers and x87 control
        // word, its FPU area the CPU's (`sched_user_fpu_of_a_killed_task_does_not_leak`).
        ROLE_FPU_DIE => fpu::load_and_fault(&fpu::pattern(fpu::DEAD_SEED), fpu::DEAD_SEED),
        // Started after that death on the same CPU: first, what its FPU registers hold.
        // Slot 0: report endpoint; label 0x600d, words [vector lanes equal to the dead task's
        // pattern | x87 registers like the dead task's << 32, MXCSR | x87 control word << 32,
        // upper ymm lanes not zero, avx].
        ROLE_FPU_FRESH => {
            let h = fpu::snapshot();
            let dead = fpu::pattern(fpu::DEAD_SEED);
            let (same, upper) = fpu::lanes_like(&h, &dead);
            let x87 = fpu::x87_like(&h, &dead);
            let _ = send(0, 0x600d, [same | x87 << 32, h.mxcsr as u64 | u64::from(h.fcw) << 32, upper, fpu::avx_usable() as u64]);
            0
        }
        ROLE_TOUCH_KERNEL => {
            log("uapp: reading kernel memory (this task should be killed)");
            let v = hostile::read_u8(0xffff_ffff_8020_0000);
            v.unwrap_or(0) as u64
        }
        ROLE_BAD_PORT => {
            log("uapp: reading CMOS port 0x71 without a grant (this task should be killed)");
            inb(0x71) as u64
        }
        ROLE_SPIN => loop {
            core::hint::spin_loop();
        },
        // slot 0: rtcd, slot 1: report endpoint.
        ROLE_RTC_CLIENT => {
            let t = call(0, 1, [0; 4]);
            sleep_ns(300_000_000);
            let k = call(0, 2, [0; 4]);
            match (t, k) {
                (Ok(t), Ok(k)) => {
                    let s = t.words[0];
                    logf!("uapp: rtcd says {:02}:{:02}:{:02} {}-{:02}-{:02}, {} RTC interrupts so far",
                        s / 3600, (s / 60) % 60, s % 60, t.words[3], t.words[2], t.words[1], k.words[0]);
                    let _ = send(1, 0x7c, [t.words[0], t.words[3], k.words[0], 0]);
                }
                _ => {
                    let _ = send(1, 0x7c, [u64::MAX, 0, 0, 0]);
                }
            }
            0
        }
        // slot 0: own endpoint. Receives one message and exits without replying.
        ROLE_ONE_SHOT => {
            let _ = recv(0, 0);
            0x05
        }
        // Six stretches of about 120 ms of spinning without a system call, each followed by a
        // 30 ms sleep (a blocking one); exits with 0x51. The stretches add up to more than a
        // 300 ms watchdog limit, none reaches it: the watchdog must not kill it.
        ROLE_SPIN_SLEEP => {
            // the TSC's rate, from the clock (system calls before the stretches only)
            let (t0, c0) = (now_ns(), rdtsc());
            sleep_ns(20_000_000);
            let (t1, c1) = (now_ns(), rdtsc());
            let per_ms = (c1 - c0) / ((t1 - t0) / 1_000_000).max(1);
            for _ in 0..6 {
                let c = rdtsc();
                while rdtsc() - c < 120 * per_ms {
                    core::hint::spin_loop();
                }
                sleep_ns(30_000_000);
            }
            0x51
        }
        // Heartbeats (kernel task::services docs): 300 ms periods, beating at first and then
        // stopping in three ways the spin watchdog does not see, or going on beating across
        // a slow call.
        ROLE_BEAT_SLEEPY | ROLE_BEAT_RECV | ROLE_BEAT_BUSY => {
            let t0 = now_ns();
            while now_ns() - t0 < 600_000_000 {
                let _ = alive(300);
                sleep_ns(20_000_000);
            }
            match role {
                ROLE_BEAT_SLEEPY => loop {
                    sleep_ns(5_000_000);
                },
                ROLE_BEAT_RECV => {
                    let _ = recv(0, 0);
                    0x54
                }
                _ => loop {
                    let _ = now_ns();
                },
            }
        }
        // Beats every 20 ms for 2 s by the clock, while the test keeps it off its CPU for a
        // while; exits 0x5500_0000 + the longest gap between two beats, in ms (0x56 if a
        // beat was refused: it was never armed).
        ROLE_BEAT_READY => {
            let t0 = now_ns();
            let (mut last, mut gap) = (t0, 0);
            while now_ns() - t0 < 2_000_000_000 {
                let t = now_ns();
                gap = gap.max(t - last);
                last = t;
                if alive(300).is_err() {
                    return 0x56;
                }
                sleep_ns(20_000_000);
            }
            0x5500_0000 + (gap / 1_000_000).min(0xff_ffff)
        }
        // slot 0: a server that answers after 800 ms.
        ROLE_BEAT_KEEP => {
            let refused = [0, 1, 99, 600_001, u64::MAX].iter().all(|&p| alive(p).is_err());
            let t0 = now_ns();
            while now_ns() - t0 < 1_500_000_000 {
                let _ = alive(300);
                sleep_ns(50_000_000);
            }
            let _ = call(0, 1, [0; 4]);
            let _ = alive(300);
            if refused { 0x52 } else { 0x53 }
        }
        // slot 0: own endpoint. Takes a call and hangs in a loop without answering it (the
        // kernel's watchdog must release the caller).
        ROLE_HANG_ON_CALL => {
            let _ = recv(0, 0);
            loop {
                core::hint::spin_loop();
            }
        }
        // slot 0: report. Map, use and unmap memory.
        ROLE_MEMORY => {
            let base = 0x1000_0000u64;
            let pages = Pages::map(base, 4);
            let (r, mut sum) = (pages.is_ok(), 0);
            if let Ok(p) = &pages {
                for i in 0..2048u64 {
                    p.write_u64(i * 8, i);
                }
                for i in 0..2048u64 {
                    sum += p.read_u64(i * 8);
                }
            }
            let u = pages.is_ok_and(|p| p.unmap().is_ok());
            let _ = send(0, 0x3e, [r as u64, sum, u as u64, 0]);
            0
        }
        // slot 0: own endpoint. Label 1: checksum the granted range (w0 = 1: first fill it
        // with pattern(i, w1)); label 9: touch the last granted range after its reply (the
        // grant is gone: this task must be killed by #PF).
        ROLE_GRANT_SERVER => {
            let mut last: Option<Grant> = None;
            loop {
                let Ok(m) = recv(0, 0) else { continue };
                match m.label {
                    1 => {
                        // only what the kernel flagged as a grant: a descriptor in an
                        // ordinary call (words 2, 3) is the sender's data
                        let Some(g) = m.grant() else {
                            let _ = reply(m.reply, 0xbad, [0; 4]);
                            continue;
                        };
                        let (len, writable) = (g.len(), g.writable());
                        if m.words[0] == 1 && writable {
                            for i in 0..len / 8 {
                                g.write_u64(i * 8, pattern(i, m.words[1]));
                            }
                        }
                        let _ = reply(m.reply, 2, [checksum(&g, len), g.addr(), writable as u64, 0]);
                        last = Some(g);
                    }
                    9 => {
                        log("uapp: touching a revoked grant (this task should be killed)");
                        let v = last.as_ref().map_or(0, |g| g.read_u64(0));
                        let _ = reply(m.reply, 0xbad, [v, 0, 0, 0]);
                    }
                    _ => {
                        let _ = reply(m.reply, 0, [0; 4]);
                    }
                }
            }
        }
        // slot 0: grant server (send+grant), slot 1: report endpoint, slot 2: the server
        // without the grant right.
        ROLE_GRANT_CLIENT => {
            const BASE: u64 = 0x2000_0000;
            const LEN: u64 = 64 * 1024;
            let Ok(pages) = Pages::map(BASE, LEN / 4096) else {
                let _ = send(1, 0x9a, [0; 4]);
                return 1;
            };
            for i in 0..LEN / 8 {
                pages.write_u64(i * 8, pattern(i, 0x1234));
            }
            let local = checksum(&pages, LEN);
            // Read-only bulk transfer: the server checksums our 64 KiB.
            let ro = matches!(call_grant(0, 1, 0, 0, &pages, LEN, false), Ok(r) if r.label == 2 && r.words[0] == local && r.words[2] == 0);
            // Read-write: the server fills the pages, we see its data.
            let rw = match call_grant(0, 1, 1, 0x77, &pages, LEN, true) {
                Ok(r) => r.label == 2 && r.words[2] == 1 && (0..LEN / 8).all(|i| pages.read_u64(i * 8) == pattern(i, 0x77)) && r.words[0] == checksum(&pages, LEN),
                Err(_) => false,
            };
            // Memory we do not own, or cannot write, is refused; so is a capability without
            // the grant right.
            let mut errs = 0u64;
            if grant_raw(0, 1, 0x3000_0000, 4096, false) == Err(100) {
                errs |= 1; // unmapped
            }
            if grant_raw(0, 1, 0xffff_8000_0000_0000, 4096, false) == Err(100) {
                errs |= 2; // kernel half
            }
            let text = run as *const () as u64 & !0xfff;
            if grant_raw(0, 1, text, 4096, true) == Err(100) {
                errs |= 4; // read-only page granted writable
            }
            if call_grant(2, 1, 0, 0, &pages, 4096, false).err() == Some(2) {
                errs |= 8; // no grant right
            }
            if grant_raw(0, 1, BASE + 8, 4096, false).is_err() && call_grant(0, 1, 0, 0, &pages, 0, false).is_err() {
                errs |= 16; // misaligned / empty
            }
            // A grant descriptor forged in an ordinary call (the server's first grant slot,
            // writable, where our grants were mapped): no kernel grant flag, so the server
            // refuses it instead of reading or writing whatever is mapped there.
            if matches!(call(0, 1, [1, 0x66, 0x0000_6000_0000_0000 | 1, LEN]), Ok(r) if r.label == 0xbad) {
                errs |= 32;
            }
            // The server's mapping ended with its reply: touching it kills the server.
            let probe = call(0, 9, [0; 4]);
            let dead = probe.err() == Some(4);
            let _ = send(1, 0x9a, [ro as u64, rw as u64, errs, dead as u64]);
            0
        }
        // slot 0: own endpoint. Granted: one IOAPIC page, 4 DMA pages. The first call brings
        // (IOAPIC phys, an ungranted MMIO address); the second makes it touch ungranted MMIO.
        ROLE_MMIO_DRIVER => {
            const REGS: u64 = 0x3000_0000;
            const DMA: u64 = 0x3100_0000;
            let Ok(m) = recv(0, 0) else { return 1 };
            let (io, bad) = (m.words[0], m.words[1]);
            let mut ver = 0u64;
            let regs = Mmio::map(REGS, io, 4096);
            if let Ok(r) = &regs {
                r.write_u32(0, 1); // IOREGSEL = version register
                ver = r.read_u32(0x10) as u64; // IOWIN
            }
            let mut errs = 0u64;
            if Mmio::map(REGS + 0x1000, bad, 4096).err() == Some(100) {
                errs |= 1;
            }
            if Mmio::map(REGS + 0x2000, io + 0x1000, 4096).err() == Some(100) {
                errs |= 2;
            }
            let dma = DmaRegion::alloc(DMA, 4);
            let phys = dma.as_ref().map_or(0, |d| d.phys());
            if let Ok(d) = &dma {
                for i in 0..4 {
                    d.write_u64(i * 4096, 0xd4a0 + i);
                }
            }
            if DmaRegion::alloc(DMA + 0x10000, 1).err() == Some(100) {
                errs |= 4;
            }
            let _ = reply(m.reply, 1, [ver, phys, errs, 0]);
            let _ = recv(0, 0);
            log("uapp: touching ungranted MMIO (this task should be killed)");
            hostile::read_u64(REGS + 0x1000).unwrap_or(0)
        }
        // slot 0: own endpoint. The first message brings a granted MMIO page (IOAPIC).
        ROLE_HOSTILE_ARGS => {
            let Ok(m) = recv(0, 0) else { return 1 };
            let (ok, pages, _) = hostile_args(m.words[0]);
            // The longest receive timeout waits (it wrapped into the past and timed out).
            let r = recv(0, u64::MAX - 1);
            let waited = matches!(r, Ok(ref w) if w.label == 2);
            let _ = reply(m.reply, 1, [ok, pages, waited as u64, 0]);
            0
        }
        // Runs with EFLAGS.AC set (timer interrupts and syscalls meanwhile), then exits.
        ROLE_SET_AC => {
            set_ac(true);
            let t = now_ns();
            while now_ns() - t < 200_000_000 {
                for _ in 0..10_000 {
                    core::hint::spin_loop();
                }
                null();
            }
            set_ac(false);
            0x0ac
        }
        // Spins in ring 3 (no syscalls for long stretches) for 1.5 s, then exits with 0x5f.
        ROLE_SPIN_FOR => {
            let t = now_ns();
            while now_ns() - t < 1_500_000_000 {
                let c = rdtsc();
                while rdtsc() - c < 1_000_000 {
                    core::hint::spin_loop();
                }
            }
            0x5f
        }
        ROLE_UDP_ECHO => {
            let Ok(m) = recv(0, 0) else { return 1 };
            udp_echo(m.words[0])
        }
        ROLE_UDP_CLIENT => udp_client(),
        ROLE_TCP_SERVER => recv(0, 0).map(|m| tcp::server(m.words[0] as u16)).unwrap_or(1),
        ROLE_TCP_CLIENT | ROLE_TCP_DIER => {
            let Ok(m) = recv(0, 0) else { return 0 };
            let (peer, port) = (catenary_netsock::addr_of(m.words[0], m.words[1]), m.words[2] as u16);
            if role == ROLE_TCP_CLIENT { tcp::client(peer, port) } else { tcp::dier(peer, port) }
        }
        ROLE_RESTART_CLIENT | ROLE_RESTART_PEER => {
            let Ok(m) = recv(0, 0) else { return 0 };
            let (peer, port) = (catenary_netsock::addr_of(m.words[0], m.words[1]), m.words[2] as u16);
            if role == ROLE_RESTART_CLIENT { restart::client(peer, port) } else { restart::peer(peer) }
        }
        _ => 1,
    }
}
