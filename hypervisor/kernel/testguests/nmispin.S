/* A guest that runs without exiting while the host takes an NMI (issue 9 item 2, docs/vmm.md
 * "Host NMIs while a guest runs"): 20 rounds, each a busy loop on RDTSC for EBX << 10 TSC
 * ticks followed by one port write (0xff to the 8259's mask register, an exit the VMM
 * emulates: the test counts the rounds by it). Then prints "nmispin: done" and powers off
 * (cli; hlt). Entered in 32-bit flat protected mode, paging off, interrupts off. */
    .code32
    .text
    .globl _start
    .set ROUNDS, 20
_start:
    mov edi, ebx
    shl edi, 10
    mov esi, ROUNDS
1:  rdtsc
    mov ecx, eax
2:  rdtsc
    sub eax, ecx
    cmp eax, edi
    jb 2b
    mov al, 0xff
    out 0x21, al
    dec esi
    jnz 1b
    call 3f
3:  pop esi
    add esi, offset msg - 3b
    mov dx, 0x3f8
4:  lodsb
    test al, al
    jz 5f
    out dx, al
    jmp 4b
5:  cli
    hlt
    jmp 5b
msg:
    .asciz "nmispin: done\n"
