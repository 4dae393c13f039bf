/* A small non-Linux guest that misbehaves on purpose, one scenario per run (EBX selects it).
 * Entered in 32-bit flat protected mode, paging off, interrupts off, at its load address.
 * The node must survive every scenario; each VM ends only itself.
 *   0 garbage port I/O (unknown ports: survives), then string I/O from outside RAM (stopped)
 *   1 unknown MSRs → #GP injected into the guest (its handler counts them) → powers off
 *   2 wild MMIO (no device at the address) → the VM is stopped
 *   3 invalid instruction with no IDT → #UD → double → triple fault → the VM is stopped
 *   4 triple fault (empty IDT, int3)
 *   5 an MMIO access by an instruction the device model does not emulate (movsd)
 *   6 compute for 2^28 TSC cycles (no exits of its own: only host interrupts stop it), then
 *     power off (the vCPU task must be preempted meanwhile)
 * Position independent: EBP holds the load address. */
    .code32
    .text
    .globl _start
_start:
    call 1f
1:  pop ebp
    sub ebp, offset 1b - _start
    lea esp, [ebp - 16]          /* stack just below the code */
    lea eax, [ebp + gdt - _start] /* our own GDT: flat code 0x08, data 0x10 (for the IDT gates) */
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
    call install_gp_handler
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
    ud2
    jmp poweroff

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

poweroff:
    cli
    hlt
    jmp poweroff

/* puts: ESI = NUL-terminated string → COM1 */
puts:
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  ret

/* An IDT whose #GP gate (13) points at gp_handler, everything else not present. */
install_gp_handler:
    lea edi, [ebp + idt - _start]
    lea eax, [ebp + gp_handler - _start]
    mov word ptr [edi + 13*8 + 0], ax
    mov word ptr [edi + 13*8 + 2], 0x08
    mov word ptr [edi + 13*8 + 4], 0x8e00
    shr eax, 16
    mov word ptr [edi + 13*8 + 6], ax
    lea eax, [ebp + idt - _start]
    mov dword ptr [ebp + idt_ptr + 2 - _start], eax
    lidt [ebp + idt_ptr - _start]
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
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
gdt_ptr:
    .short 3*8 - 1
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
scratch:
    .long 0
msg_long_done:   .asciz "hostile guest: long run done\n"
msg_hello:       .asciz "hostile guest: starting scenario\n"
msg_io_ok:       .asciz "hostile guest: garbage port I/O done, still running\n"
msg_msr_ok:      .asciz "hostile guest: 2 unknown MSR accesses -> 2 #GP delivered\n"
msg_msr_bad:     .asciz "hostile guest: unknown MSR accesses did not fault\n"
msg_unreachable: .asciz "hostile guest: the VMM let an impossible access through?!\n"
    .balign 8
idt:
    .fill 32*8, 1, 0
