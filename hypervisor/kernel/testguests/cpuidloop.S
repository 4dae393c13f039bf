/* The null exit round trip (docs/vmm.md "Where exits go"): EBX iterations of CPUID (each an
 * intercepted #VMEXIT the VMM emulates and resumes), then the same loop with a NOP in CPUID's
 * place (no exit), each timed with RDTSC (not intercepted). Prints
 * "cpuidloop: exit HEX16 noexit HEX16\n" (TSC cycles of each whole loop) on the UART and powers
 * off (cli; hlt). Entered in 32-bit flat protected mode, paging off, interrupts off. */
    .code32
    .text
    .globl _start
_start:
    call 1f
1:  pop esi
    mov [esi + n - 1b], ebx
    /* loop with exits */
    rdtsc
    mov [esi + t0 - 1b], eax
    mov [esi + t0 + 4 - 1b], edx
    mov ebp, [esi + n - 1b]
2:  xor eax, eax
    xor ecx, ecx
    cpuid
    dec ebp
    jnz 2b
    rdtsc
    sub eax, [esi + t0 - 1b]
    sbb edx, [esi + t0 + 4 - 1b]
    mov [esi + dexit - 1b], eax
    mov [esi + dexit + 4 - 1b], edx
    /* the same loop without exits */
    rdtsc
    mov [esi + t0 - 1b], eax
    mov [esi + t0 + 4 - 1b], edx
    mov ebp, [esi + n - 1b]
3:  xor eax, eax
    xor ecx, ecx
    nop
    dec ebp
    jnz 3b
    rdtsc
    sub eax, [esi + t0 - 1b]
    sbb edx, [esi + t0 + 4 - 1b]
    mov [esi + dnone - 1b], eax
    mov [esi + dnone + 4 - 1b], edx
    /* report */
    lea ebx, [esi + m1 - 1b]
    call puts
    mov edi, [esi + dexit + 4 - 1b]
    call hex32
    mov edi, [esi + dexit - 1b]
    call hex32
    lea ebx, [esi + m2 - 1b]
    call puts
    mov edi, [esi + dnone + 4 - 1b]
    call hex32
    mov edi, [esi + dnone - 1b]
    call hex32
    lea ebx, [esi + m3 - 1b]
    call puts
4:  cli
    hlt
    jmp 4b

/* EBX: NUL-terminated string to the UART. */
puts:
    mov dx, 0x3f8
5:  mov al, [ebx]
    test al, al
    jz 6f
    out dx, al
    inc ebx
    jmp 5b
6:  ret

/* EDI as 8 hex digits to the UART. */
hex32:
    mov ecx, 8
    mov dx, 0x3f8
7:  rol edi, 4
    mov eax, edi
    and al, 0xf
    cmp al, 10
    jb 8f
    add al, 'a' - 10 - '0'
8:  add al, '0'
    out dx, al
    dec ecx
    jnz 7b
    ret

m1: .asciz "cpuidloop: exit "
m2: .asciz " noexit "
m3: .asciz "\n"
    .balign 8
n:     .long 0, 0
t0:    .long 0, 0
dexit: .long 0, 0
dnone: .long 0, 0
