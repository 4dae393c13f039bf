/* World switches back to back (docs/vmm.md, "The host triple fault"): EBX port writes to the
 * 8259's mask register, each an IOIO #VMEXIT that the VMM emulates, then prints
 * "exitloop: done" and powers off (cli; hlt). Entered in 32-bit flat protected mode, paging
 * off, interrupts off; EBX = the number of writes. */
    .code32
    .text
    .globl _start
_start:
    mov al, 0xff
1:  out 0x21, al
    dec ebx
    jnz 1b
    call 2f
2:  pop esi
    add esi, offset msg - 2b
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  cli
    hlt
    jmp 4b
msg:
    .asciz "exitloop: done\n"
