/* Events interrupted mid-delivery (issue 9 item 1). Each event below is delivered onto a stack
 * in a RAM chunk the guest has never touched, so pushing the interrupt frame takes a nested page
 * fault (lazy guest RAM) in the middle of the delivery: the hypervisor maps the chunk and must
 * then deliver the *same* event again, exactly as the CPU would have. The handler checks the
 * return address the CPU pushed:
 *   int3      (software interrupt)  -> must point after the int3
 *   int 0x80  (software interrupt)  -> must point after the int 0x80
 *   ud2       (fault)               -> must point at the ud2
 *   IRQ 0     (PIT through the 8259, injected by the VMM) -> must arrive (an interrupt the
 *             VMM dropped instead of delivering again is lost for good: the PIC has acked it),
 *             and point into the wait loop
 * and prints one line per event ("reinject: <name> ok" or "... BAD"), then powers off.
 * Entered in 32-bit flat protected mode, paging off, interrupts off; EBP = load address. */
    .code32
    .text
    .globl _start
_start:
    call 1f
1:  pop ebp
    sub ebp, offset 1b - _start
    lea esp, [ebp - 16]
    lea eax, [ebp + gdt - _start]
    mov dword ptr [ebp + gdt_ptr + 2 - _start], eax
    lgdt [ebp + gdt_ptr - _start]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    /* IDT: vectors 3, 6 and 0x80 -> handler_3 / handler_6 / handler_80 (DPL 3 not needed at CPL 0) */
    lea edi, [ebp + idt - _start]
    lea eax, [ebp + handler_3 - _start]
    mov ecx, 3
    call set_gate
    lea eax, [ebp + handler_6 - _start]
    mov ecx, 6
    call set_gate
    lea eax, [ebp + handler_80 - _start]
    mov ecx, 0x80
    call set_gate
    lea eax, [ebp + handler_20 - _start]
    mov ecx, 0x20
    call set_gate
    lea eax, [ebp + idt - _start]
    mov dword ptr [ebp + idt_ptr + 2 - _start], eax
    lidt [ebp + idt_ptr - _start]

    /* int3 onto a fresh stack in chunk 1 (2-4 MiB) */
    mov esi, esp
    mov esp, 0x400000
    lea eax, [ebp + after_int3 - _start]
    mov [ebp + expect - _start], eax
    int3
after_int3:
    mov esp, esi
    lea esi, [ebp + msg_int3 - _start]
    call report

    /* int 0x80 onto a fresh stack in chunk 2 (4-6 MiB) */
    mov esi, esp
    mov esp, 0x600000
    lea eax, [ebp + after_int80 - _start]
    mov [ebp + expect - _start], eax
    int 0x80
after_int80:
    mov esp, esi
    lea esi, [ebp + msg_int80 - _start]
    call report

    /* #UD onto a fresh stack in chunk 3 (6-8 MiB): the handler skips the 2-byte ud2 */
    mov esi, esp
    mov esp, 0x800000
    lea eax, [ebp + at_ud2 - _start]
    mov [ebp + expect - _start], eax
at_ud2:
    ud2
    mov esp, esi
    lea esi, [ebp + msg_ud - _start]
    call report

    /* IRQ 0 onto a fresh stack in chunk 4 (8-10 MiB): 8259 at vector 0x20 with only IRQ 0
     * unmasked, PIT channel 0 at ~100 Hz; wait (no exits of our own) at most ~2^31 TSC cycles */
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    mov al, 0x34
    out 0x43, al
    mov al, 0x9c
    out 0x40, al
    mov al, 0x2e
    out 0x40, al
    mov esi, esp
    mov esp, 0xa00000
    rdtsc
    mov edi, eax
    sti
wait_irq:
    cmp byte ptr [ebp + result - _start], 0
    jne wait_done
    rdtsc
    sub eax, edi
    cmp eax, 0x80000000
    jb wait_irq
wait_done:
    cli
    mov esp, esi
    lea esi, [ebp + msg_irq - _start]
    call report

poweroff:
    cli
    hlt
    jmp poweroff

/* IRQ 0: the pushed EIP must lie in the wait loop; EOI, mask the PIT line, record */
handler_20:
    push eax
    push edx
    mov edx, [esp + 8]
    lea eax, [ebp + wait_irq - _start]
    cmp edx, eax
    jb 5f
    lea eax, [ebp + wait_done - _start]
    cmp edx, eax
    jae 5f
    mov byte ptr [ebp + result - _start], 1
    jmp 6f
5:  mov byte ptr [ebp + result - _start], 2
6:  mov al, 0xff
    out 0x21, al
    mov al, 0x20
    out 0x20, al
    pop edx
    pop eax
    iretd

/* handlers: compare the pushed EIP with `expect`, record the verdict in `result` */
handler_3:
handler_80:
    mov eax, [esp]
    cmp eax, [ebp + expect - _start]
    sete byte ptr [ebp + result - _start]
    iretd
handler_6:
    mov eax, [esp]
    cmp eax, [ebp + expect - _start]
    sete byte ptr [ebp + result - _start]
    add dword ptr [esp], 2
    iretd

/* report: ESI = event name; prints "reinject: <name> ok|BAD\n" and clears `result` */
report:
    call puts
    lea esi, [ebp + msg_bad - _start]
    cmp byte ptr [ebp + result - _start], 1
    jne 2f
    lea esi, [ebp + msg_ok - _start]
2:  call puts
    mov byte ptr [ebp + result - _start], 0
    ret

/* set_gate: EDI = IDT, ECX = vector, EAX = handler (32-bit interrupt gate, selector 0x08) */
set_gate:
    mov word ptr [edi + ecx*8 + 0], ax
    mov word ptr [edi + ecx*8 + 2], 0x08
    mov word ptr [edi + ecx*8 + 4], 0x8e00
    shr eax, 16
    mov word ptr [edi + ecx*8 + 6], ax
    ret

/* puts: ESI = NUL-terminated string -> COM1 */
puts:
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  ret

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
    .short 0x81*8 - 1
    .long 0
expect:
    .long 0
result:
    .long 0
msg_int3:  .asciz "reinject: int3 "
msg_int80: .asciz "reinject: int 0x80 "
msg_ud:    .asciz "reinject: ud2 "
msg_irq:   .asciz "reinject: irq0 "
msg_ok:    .asciz "ok\n"
msg_bad:   .asciz "BAD (missing, or wrong return address)\n"
    .balign 8
idt:
    .fill 0x81*8, 1, 0
