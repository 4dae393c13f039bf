/* SMP test guest (ktest smp_vm_*): computes until the node stops it and reports progress.
 * Entered in 32-bit flat protected mode, paging off, interrupts off, at its load address;
 * EBX = seed (non-zero, distinct per VM).
 *
 * One block = ROUNDS rounds of xorshift32, computed twice: in EAX (integer registers) and in
 * the low lane of xmm1 (SSE). After each block: the two results must agree, and the block
 * counters in ESI and in xmm0 (paddd) must agree; then one `out 0x80` (the progress mark the
 * node counts: one port exit per block). Anything disagreeing means the host lost or mixed up
 * this vCPU's register state (e.g. across a move to another CPU): the guest prints
 * "progress: state lost" and powers off with status 0xbad. A healthy guest never stops on
 * its own: the node ends it (`Ended::Killed`).
 * Position independent: EBP holds the load address. No memory beyond its own code page. */
    .set HC_POWER_OFF, 0x43415400
    .set ROUNDS, 4096
    .code32
    .text
    .globl _start
_start:
    call 1f
1:  pop ebp
    sub ebp, offset 1b - _start
    lea esp, [ebp - 16]
    mov eax, cr4
    or eax, 0x200                /* CR4.OSFXSR: SSE on */
    mov cr4, eax
    mov eax, cr0
    and eax, ~0x4                /* EM off */
    or eax, 0x2                  /* MP on */
    mov cr0, eax
    mov eax, ebx                 /* EAX and xmm1 lane 0: the xorshift state */
    movd xmm1, ebx
    pxor xmm0, xmm0              /* xmm0 lane 0: blocks done */
    mov edi, 1
    movd xmm7, edi               /* xmm7 = 1 */
    xor esi, esi                 /* ESI: blocks done */
block:
    mov ecx, ROUNDS
2:  mov edx, eax                 /* x ^= x << 13; x ^= x >> 17; x ^= x << 5 */
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    movdqa xmm2, xmm1
    pslld xmm2, 13
    pxor xmm1, xmm2
    movdqa xmm2, xmm1
    psrld xmm2, 17
    pxor xmm1, xmm2
    movdqa xmm2, xmm1
    pslld xmm2, 5
    pxor xmm1, xmm2
    dec ecx
    jnz 2b
    inc esi
    paddd xmm0, xmm7
    movd edx, xmm1
    cmp edx, eax
    jne lost
    movd edx, xmm0
    cmp edx, esi
    jne lost
    mov edx, eax
    out 0x80, al                 /* progress mark: one exit per block */
    cmp edx, eax
    jne lost
    jmp block

lost:
    lea esi, [ebp + msg_lost - _start]
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  xor eax, eax
    cpuid
    mov ebx, 0xbad
    mov eax, HC_POWER_OFF
    cmp ecx, 0x444d4163          /* "cAMD" of AuthenticAMD */
    je 5f
    vmcall
    jmp 6f
5:  vmmcall
6:  cli
    hlt
    jmp 6b

msg_lost: .asciz "progress: state lost\n"
