/* Small non-Linux test guests, one scenario per run (EBX selects it): hostile ones that
 * misbehave on purpose, and a healthy one that runs beside them.
 * Entered in 32-bit flat protected mode, paging off, interrupts off, at its load address.
 * The node must survive every scenario; each VM ends only itself. The kernel tests
 * (ktest.rs) assert the exact way each one ends; "status N" below is the power-off hypercall
 * status (VMMCALL on AMD, VMCALL on Intel).
 *   0 garbage port I/O (unknown ports: survives), then string I/O from outside RAM (stopped)
 *   1 unknown MSRs → #GP injected into the guest (its handler counts them) → powers off
 *   2 wild MMIO (no device at the address) → the VM is stopped
 *   3 invalid instruction (ud2) → #UD delivered to the guest's own handler → status 6
 *   4 triple fault (empty IDT, int3)
 *   5 an MMIO access by an instruction the device model does not emulate (movsd)
 *   6 compute for 2^28 TSC cycles (no exits of its own: only host interrupts stop it), then
 *     power off (the vCPU task must be preempted meanwhile)
 *   7 healthy: sum of i*i for i = 1..1000 with a port write per step, xmm0, DR0 and (with AVX)
 *     the upper half of ymm4 kept across the exits → status 0x13e5e51c (anything else:
 *     0xbad0 | what broke: 1 xmm0, 2 DR0, 4 ymm4)
 *   8 WBINVD, INVD, WBINVD (intercepted, skipped as no-ops) → status 8
 *   9 VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA → 7 × #UD in the guest's handler,
 *     each skipped → status 7
 *  10 alignment check at CPL 3 (CR0.AM + EFLAGS.AC, misaligned read) → #AC in the guest's
 *     handler → status 17 (0xac0 if the CPU raises no #AC: QEMU's emulated CPU does not)
 *  11 debug registers (and a ymm4 different from the healthy guest's): DR0–DR3 written and
 *     read back across exits (+0x20000 when intact), its own XCR0 (3) read back after exits (+0x40000; +0x80000 when its CPUID has no XSAVE), a
 *     single-step #DB storm of DB_STORM traps (+count), a data breakpoint (+0x10000)
 *     → status 0x707d0
 *  12 paging on with CR3 in the virtio-mmio window: the page walk leaves RAM → stopped
 *  13 paging on with a page table in a RAM chunk nothing has touched: the walk fault maps
 *     it (zeroed), the guest takes its own #PF for 0x400000 → status 14
 *  14 MONITOR, MWAIT (intercepted: the VMM injects #UD, CPUID hides MONITOR) → 2 × #UD in the
 *     guest's handler, each skipped → status 2 (natively MWAIT would idle the host CPU)
 * Position independent: EBP holds the load address. */
    .code32
    .text
    .globl _start
    .set HC_POWER_OFF, 0x43415400
    .set DB_STORM, 2000
_start:
    call 1f
1:  pop ebp
    sub ebp, offset 1b - _start
    lea esp, [ebp - 16]          /* stack just below the code */
    lea eax, [ebp + gdt - _start] /* our own GDT: flat code 0x08, data 0x10, ring-3 0x1b/0x23, TSS 0x28 */
    mov dword ptr [ebp + gdt_ptr + 2 - _start], eax
    lgdt [ebp + gdt_ptr - _start]
    lea esi, [ebp + msg_hello - _start]
    call puts
    cmp ebx, 0
    je garbage_io
    cmp ebx, 1
    je unknown_msr
    cmp ebx, 2
    je wild_mmio
    cmp ebx, 3
    je invalid_insn
    cmp ebx, 4
    je triple_fault
    cmp ebx, 5
    je bad_mmio_insn
    cmp ebx, 6
    je long_run
    cmp ebx, 7
    je healthy
    cmp ebx, 8
    je cache_flush
    cmp ebx, 9
    je svm_insns
    cmp ebx, 10
    je align_check
    cmp ebx, 11
    je debug_regs
    cmp ebx, 12
    je walk_outside_ram
    cmp ebx, 13
    je walk_lazy_ram
    cmp ebx, 14
    je monitor_mwait
    jmp poweroff

garbage_io:
    mov dx, 0x1234
    mov eax, 0xdeadbeef
    out dx, eax
    in eax, dx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    mov dx, 0xffff
    out dx, al
    in al, dx
    mov dx, 0x3fb                /* UART LCR garbage, then back to 8N1 */
    mov al, 0xff
    out dx, al
    mov al, 0x03
    out dx, al
    lea esi, [ebp + msg_io_ok - _start]
    call puts
    mov dx, 0x80                 /* rep outsb from far outside guest RAM: the VMM stops us */
    mov esi, 0xfff00000
    mov ecx, 0x100000
    rep outsb
    mov dx, 0x1234               /* rep insw into far outside guest RAM */
    mov edi, 0xf0000000
    mov ecx, 0x10000
    rep insw
    lea esi, [ebp + msg_unreachable - _start]
    call puts
    jmp poweroff

unknown_msr:
    mov ecx, 13
    lea eax, [ebp + gp_handler - _start]
    call set_gate
    mov ecx, 0xdeadbeef
    rdmsr
    mov ecx, 0xc0011234
    mov eax, 1
    xor edx, edx
    wrmsr
    cmp dword ptr [ebp + gp_count - _start], 2
    jne 2f
    lea esi, [ebp + msg_msr_ok - _start]
    call puts
    jmp poweroff
2:  lea esi, [ebp + msg_msr_bad - _start]
    call puts
    jmp poweroff

wild_mmio:
    mov eax, [0xe0000000]
    lea esi, [ebp + msg_unreachable - _start]
    call puts
    jmp poweroff

invalid_insn:
    mov ecx, 6
    lea eax, [ebp + ud_report - _start]
    call set_gate
    ud2
    lea esi, [ebp + msg_unreachable - _start]
    call puts
    jmp poweroff

/* #UD from ud2: the guest's own handler reports it and powers off with status 6. */
ud_report:
    lea esi, [ebp + msg_ud - _start]
    call puts
    mov ebx, 6
    jmp exit_status

triple_fault:
    lidt [ebp + empty_idt - _start]
    int3
    jmp poweroff

bad_mmio_insn:
    mov esi, 0xd0000000          /* the virtio-mmio window */
    lea edi, [ebp + scratch - _start]
    movsd
    jmp poweroff

long_run:
    rdtsc
    mov edi, eax
    mov esi, edx
5:  pause
    rdtsc
    sub eax, edi
    sbb edx, esi
    jnz 6f
    cmp eax, 0x10000000
    jb 5b
6:  lea esi, [ebp + msg_long_done - _start]
    call puts
    jmp poweroff

/* ---- 7: the healthy guest ---- */
healthy:
    mov eax, cr4
    or eax, 0x200                /* CR4.OSFXSR: SSE on */
    mov cr4, eax
    mov eax, cr0
    and eax, ~0x4                /* EM off */
    or eax, 0x2                  /* MP on */
    mov cr0, eax
    movdqu xmm0, [ebp + xmm_pattern - _start]
    lea esi, [ebp + ymm_pattern - _start]
    call avx_load                /* ymm4 = pattern when the CPU has AVX */
    mov [ebp + avx_on - _start], eax
    test eax, eax
    jz 21f
    lea esi, [ebp + msg_avx - _start]
    call puts
21:
    mov eax, 0x12345000
    mov dr0, eax
    xor edi, edi                 /* sum */
    mov ecx, 1
7:  mov eax, ecx
    mul eax
    add edi, eax
    mov al, cl
    out 0x80, al                 /* one exit per step (POST port) */
    inc ecx
    cmp ecx, 1000
    jbe 7b
    xor ebx, ebx
    movdqu xmm1, [ebp + xmm_pattern - _start]
    pcmpeqb xmm1, xmm0
    pmovmskb eax, xmm1
    cmp eax, 0xffff
    je 8f
    or ebx, 1                    /* xmm0 changed across exits */
8:  mov eax, dr0
    cmp eax, 0x12345000
    je 9f
    or ebx, 2                    /* DR0 changed across exits */
9:  cmp dword ptr [ebp + avx_on - _start], 0
    je 19f
    vextractf128 xmm2, ymm4, 1   /* the upper half: FXSAVE alone would not keep it */
    movdqu xmm3, [ebp + ymm_pattern + 16 - _start]
    pcmpeqb xmm2, xmm3
    pmovmskb eax, xmm2
    cmp eax, 0xffff
    je 19f
    or ebx, 4                    /* ymm4 upper half changed across exits */
19: test ebx, ebx
    jnz 10f
    mov ebx, edi
    lea esi, [ebp + msg_healthy - _start]
    call puts
    jmp exit_status
10: or ebx, 0xbad0
    lea esi, [ebp + msg_healthy_bad - _start]
    call puts
    jmp exit_status

/* ---- 8: cache flushes ---- */
cache_flush:
    wbinvd
    invd
    wbinvd
    lea esi, [ebp + msg_cache - _start]
    call puts
    mov ebx, 8
    jmp exit_status

/* ---- 9: the SVM instructions ---- */
svm_insns:
    mov ecx, 6
    lea eax, [ebp + ud_skip3 - _start]
    call set_gate
    xor eax, eax
    xor ecx, ecx
    .byte 0x0f, 0x01, 0xd8       /* vmrun */
    .byte 0x0f, 0x01, 0xda       /* vmload */
    .byte 0x0f, 0x01, 0xdb       /* vmsave */
    .byte 0x0f, 0x01, 0xdc       /* stgi */
    .byte 0x0f, 0x01, 0xdd       /* clgi */
    .byte 0x0f, 0x01, 0xde       /* skinit */
    .byte 0x0f, 0x01, 0xdf       /* invlpga */
    lea esi, [ebp + msg_svm - _start]
    call puts
    mov ebx, [ebp + ud_count - _start]
    jmp exit_status

/* ---- 14: MONITOR, MWAIT ---- */
monitor_mwait:
    mov ecx, 6
    lea eax, [ebp + ud_skip3 - _start]
    call set_gate
    lea eax, [ebp + scratch - _start] /* the monitored address: guest RAM */
    xor ecx, ecx                 /* no extensions (non-zero would be #GP) */
    xor edx, edx                 /* no hints */
    .byte 0x0f, 0x01, 0xc8       /* monitor */
    xor eax, eax                 /* C1 */
    xor ecx, ecx
    .byte 0x0f, 0x01, 0xc9       /* mwait */
    lea esi, [ebp + msg_mwait - _start]
    call puts
    mov ebx, [ebp + ud_count - _start]
    jmp exit_status

/* #UD from a 3-byte instruction: count it and skip it. */
ud_skip3:
    inc dword ptr [ebp + ud_count - _start]
    add dword ptr [esp], 3
    iretd

/* ---- 10: alignment check at CPL 3 ---- */
align_check:
    mov ecx, 17
    lea eax, [ebp + ac_handler - _start]
    call set_gate
    mov ecx, 6                   /* ring 3 reports "no #AC" with ud2 */
    lea eax, [ebp + ac_none - _start]
    call set_gate
    call load_tss
    mov eax, cr0
    or eax, 1 << 18              /* CR0.AM */
    mov cr0, eax
    lea eax, [ebp - 0x1000]      /* ring-3 stack */
    push 0x23                    /* SS */
    push eax                     /* ESP */
    pushfd
    or dword ptr [esp], 1 << 18  /* EFLAGS.AC */
    push 0x1b                    /* CS */
    lea eax, [ebp + ring3 - _start]
    push eax
    iretd
ring3:
    mov ax, 0x23
    mov ds, ax
    mov es, ax
    mov eax, [esp + 1]           /* misaligned dword read at CPL 3 with AC on */
    ud2

ac_handler:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    lea esi, [ebp + msg_ac - _start]
    call puts
    mov ebx, 17
    jmp exit_status

ac_none:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    lea esi, [ebp + msg_no_ac - _start]
    call puts
    mov ebx, 0xac0
    jmp exit_status

/* ---- 11: debug registers ---- */
debug_regs:
    lea esi, [ebp + ymm_clobber - _start]
    call avx_load                /* a different ymm4 than the healthy guest's */
    mov [ebp + avx_on - _start], eax
    mov ecx, 1
    lea eax, [ebp + db_handler - _start]
    call set_gate
    mov eax, 0x11110000
    mov dr0, eax
    mov eax, 0x22220000
    mov dr1, eax
    mov eax, 0x33330000
    mov dr2, eax
    mov eax, 0x44440000
    mov dr3, eax
    mov ecx, 100
11: out 0x80, al                 /* exits: the host runs (and uses its own DRs) meanwhile */
    loop 11b
    xor ebx, ebx
    mov eax, dr0
    cmp eax, 0x11110000
    jne 12f
    mov eax, dr1
    cmp eax, 0x22220000
    jne 12f
    mov eax, dr2
    cmp eax, 0x33330000
    jne 12f
    mov eax, dr3
    cmp eax, 0x44440000
    jne 12f
    mov ebx, 0x20000
12: mov [ebp + db_flags - _start], ebx
    cmp dword ptr [ebp + avx_on - _start], 0
    je 22f
    mov eax, 3                   /* XCR0 = x87|SSE (the host runs with x87|SSE|AVX) */
    xor edx, edx
    xor ecx, ecx
    xsetbv
    mov ecx, 100
23: out 0x80, al
    loop 23b
    xor ecx, ecx
    xgetbv                       /* not intercepted: reads the XCR0 the CPU runs the guest with */
    cmp eax, 3
    jne 24f
    or dword ptr [ebp + db_flags - _start], 0x40000
    jmp 24f
22: or dword ptr [ebp + db_flags - _start], 0x80000   /* no XSAVE in this guest's CPUID */
24:
    pushfd                       /* single-step storm: TF on; the handler turns it off */
    or dword ptr [esp], 0x100
    popfd
13: jmp 13b
db_after_storm:
    lea eax, [ebp + scratch - _start]
    mov dr0, eax
    mov eax, 0x000d0401          /* L0, RW0 = write, LEN0 = 4 bytes */
    mov dr7, eax
    mov dword ptr [ebp + scratch - _start], 1   /* data breakpoint → #DB after the write */
    nop
    xor eax, eax
    mov dr7, eax
    lea esi, [ebp + msg_db - _start]
    call puts
    mov ebx, [ebp + db_flags - _start]
    add ebx, [ebp + db_count - _start]
    jmp exit_status

db_handler:
    push eax
    mov eax, dr6
    test eax, 1
    jnz 15f
    test eax, 0x4000             /* BS: single step */
    jz 16f
    inc dword ptr [ebp + db_count - _start]
    cmp dword ptr [ebp + db_count - _start], DB_STORM
    jb 16f
    and dword ptr [esp + 12], ~0x100   /* saved EFLAGS: TF off */
    lea eax, [ebp + db_after_storm - _start]
    mov [esp + 4], eax                 /* saved EIP */
    jmp 16f
15: or dword ptr [ebp + db_flags - _start], 0x10000
    mov eax, 0x400
    mov dr7, eax
16: xor eax, eax
    mov dr6, eax
    pop eax
    iretd

/* ---- 12, 13: page walks ---- */
walk_outside_ram:
    mov eax, 0xd0000000          /* page directory in the virtio-mmio window */
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    lea esi, [ebp + msg_unreachable - _start]
    call puts
    jmp poweroff

walk_lazy_ram:
    mov ecx, 14
    lea eax, [ebp + pf_handler - _start]
    call set_gate
    mov edi, 0x8000              /* page directory at 32 KiB (loaded RAM chunk 0) */
    xor eax, eax
    mov ecx, 1024
    rep stosd
    mov dword ptr [0x8000], 0x83        /* 0-4 MiB: one 4 MiB page, identity */
    mov dword ptr [0x8004], 0x600003    /* 4-8 MiB: page table at 6 MiB (untouched chunk) */
    mov eax, cr4
    or eax, 0x10                 /* PSE */
    mov cr4, eax
    mov eax, 0x8000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, [0x400000]          /* walk reads the PTE at 6 MiB */
    lea esi, [ebp + msg_unreachable - _start]
    call puts
    jmp poweroff

pf_handler:
    mov eax, cr2
    cmp eax, 0x400000
    jne 17f
    lea esi, [ebp + msg_pf - _start]
    call puts
    mov ebx, 14
    jmp exit_status
17: mov ebx, 0xbadf
    jmp exit_status

/* ---- helpers ---- */
poweroff:
    cli
    hlt
    jmp poweroff

/* exit_status: EBX = status → the power-off hypercall (CPL 0). */
exit_status:
    push ebx
    xor eax, eax
    cpuid
    pop ebx
    mov eax, HC_POWER_OFF
    cmp ecx, 0x444d4163          /* "cAMD" of AuthenticAMD */
    je 18f
    vmcall
    jmp poweroff
18: vmmcall
    jmp poweroff

/* avx_load: if CPUID has AVX and XSAVE, turn on CR4.OSXSAVE and XCR0 = x87|SSE|AVX and load
 * ymm4 from [ESI] (32 bytes); EAX = 1, else EAX = 0. Needs SSE on (CR4.OSFXSR). */
avx_load:
    push ebx
    mov eax, 1
    cpuid
    pop ebx
    and ecx, (1 << 28) | (1 << 26)
    cmp ecx, (1 << 28) | (1 << 26)
    jne 20f
    mov eax, cr4
    or eax, (1 << 18) | 0x200    /* OSXSAVE, OSFXSR */
    mov cr4, eax
    mov eax, 7
    xor edx, edx
    xor ecx, ecx
    xsetbv
    vmovdqu ymm4, [esi]
    mov eax, 1
    ret
20: xor eax, eax
    ret

/* puts: ESI = NUL-terminated string → COM1 */
puts:
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  ret

/* set_gate: ECX = vector (< 32), EAX = handler address → 32-bit interrupt gate (code 0x08),
 * then load the IDT. */
set_gate:
    lea edi, [ebp + idt - _start]
    mov word ptr [edi + ecx*8 + 0], ax
    mov word ptr [edi + ecx*8 + 2], 0x08
    mov word ptr [edi + ecx*8 + 4], 0x8e00
    shr eax, 16
    mov word ptr [edi + ecx*8 + 6], ax
    lea eax, [ebp + idt - _start]
    mov dword ptr [ebp + idt_ptr + 2 - _start], eax
    lidt [ebp + idt_ptr - _start]
    ret

/* load_tss: a TSS whose ring-0 stack (SS0:ESP0) takes exceptions from ring 3, in GDT slot
 * 0x28, loaded into TR. */
load_tss:
    lea edi, [ebp + tss - _start]
    lea eax, [ebp - 0x100]
    mov [edi + 4], eax           /* ESP0 */
    mov dword ptr [edi + 8], 0x10  /* SS0 */
    mov word ptr [edi + 102], 104  /* I/O map base past the limit: no ports for ring 3 */
    lea esi, [ebp + gdt - _start + 0x28]
    mov eax, edi
    shl eax, 16
    or eax, 0x67
    mov [esi], eax               /* base 15:0, limit 15:0 */
    mov eax, edi
    shr eax, 16
    and eax, 0xff
    or eax, 0x8900               /* present, 32-bit available TSS */
    mov ecx, edi
    and ecx, 0xff000000
    or eax, ecx
    mov [esi + 4], eax
    mov ax, 0x28
    ltr ax
    ret

/* #GP from RDMSR/WRMSR (both 2 bytes long): count it and skip the instruction. */
gp_handler:
    add esp, 4                   /* error code */
    inc dword ptr [ebp + gp_count - _start]
    add dword ptr [esp], 2
    iretd

    .balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff     /* 0x08 ring-0 code */
    .quad 0x00cf93000000ffff     /* 0x10 ring-0 data */
    .quad 0x00cffb000000ffff     /* 0x18 ring-3 code */
    .quad 0x00cff3000000ffff     /* 0x20 ring-3 data */
    .quad 0                      /* 0x28 TSS (load_tss) */
gdt_ptr:
    .short 6*8 - 1
    .long 0
    .balign 8
idt_ptr:
    .short 32*8 - 1
    .long 0
empty_idt:
    .short 0
    .long 0
gp_count:
    .long 0
ud_count:
    .long 0
db_count:
    .long 0
db_flags:
    .long 0
scratch:
    .long 0
avx_on:
    .long 0
    .balign 16
xmm_pattern:
    .quad 0x0123456789abcdef
    .quad 0xfedcba9876543210
ymm_pattern:
    .quad 0x1111222233334444, 0x5555666677778888, 0x99990000aaaabbbb, 0xccccddddeeeeffff
ymm_clobber:
    .quad 0xdeaddeaddeaddead, 0xdeaddeaddeaddead, 0xdeaddeaddeaddead, 0xdeaddeaddeaddead
msg_long_done:   .asciz "hostile guest: long run done\n"
msg_hello:       .asciz "hostile guest: starting scenario\n"
msg_io_ok:       .asciz "hostile guest: garbage port I/O done, still running\n"
msg_msr_ok:      .asciz "hostile guest: 2 unknown MSR accesses -> 2 #GP delivered\n"
msg_msr_bad:     .asciz "hostile guest: unknown MSR accesses did not fault\n"
msg_unreachable: .asciz "hostile guest: the VMM let an impossible access through?!\n"
msg_ud:          .asciz "hostile guest: #UD delivered to the guest's own handler\n"
msg_healthy:     .asciz "healthy guest: sum of squares done, xmm0, ymm4 and DR0 intact\n"
msg_avx:         .asciz "healthy guest: AVX on, ymm4 loaded\n"
msg_healthy_bad: .asciz "healthy guest: state corrupted across exits\n"
msg_cache:       .asciz "hostile guest: WBINVD/INVD done, still running\n"
msg_svm:         .asciz "hostile guest: SVM instructions done\n"
msg_mwait:       .asciz "hostile guest: MONITOR/MWAIT done\n"
msg_ac:          .asciz "hostile guest: #AC delivered to the guest's own handler\n"
msg_no_ac:       .asciz "hostile guest: this CPU raised no #AC for a misaligned access at CPL 3\n"
msg_db:          .asciz "hostile guest: debug-register scenario done\n"
msg_pf:          .asciz "hostile guest: #PF for 0x400000 after a page walk through a fresh chunk\n"
    .balign 8
idt:
    .fill 32*8, 1, 0
tss:
    .fill 104, 1, 0
