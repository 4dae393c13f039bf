/* Every injected interrupt is delivered exactly once (issue 9 item 1, docs/vmm.md "Soak").
 * The PIT interrupts the guest IRQONCE_COUNT times, one-shot (8259 at vector 0x20, IRQ 0 only); each
 * time the guest waits in `sti; hlt`, so a genuine interrupt returns into that wait loop. The
 * handler spins with interrupts off and no exits for a while before it acknowledges the
 * interrupt (its first exit); an entry whose return address lies anywhere but the wait loop
 * (i.e. in the handler itself, where IF=0) is the same interrupt delivered a second time. QEMU TCG does exactly that to an interrupt injected through EVENTINJ when its vCPU
 * thread is kicked in that stretch (the kernel test kicks it from the other CPU meanwhile).
 * Prints "irqonce: entries XXXXXXXX nested XXXXXXXX" (hex) and powers off (cli; hlt).
 * Entered in 32-bit flat protected mode, paging off, interrupts off. */
    .code32
    .text
    .globl _start
    .set IRQONCE_COUNT, 24
    .set SPIN, 300000
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
    lea edi, [ebp + idt - _start]
    lea eax, [ebp + handler_20 - _start]
    mov word ptr [edi + 0x20*8 + 0], ax
    mov word ptr [edi + 0x20*8 + 2], 0x08
    mov word ptr [edi + 0x20*8 + 4], 0x8e00
    shr eax, 16
    mov word ptr [edi + 0x20*8 + 6], ax
    mov dword ptr [ebp + idt_ptr + 2 - _start], edi
    lidt [ebp + idt_ptr - _start]

    /* 8259: vector base 0x20, only IRQ 0 unmasked; PIT channel 0 at ~1 kHz */
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
wait_irq:
    /* PIT channel 0 one-shot (mode 0, ~1 ms), armed once per pass: exactly one genuine
     * interrupt per pass, however slow the handler is (a periodic tick would pile up behind a
     * slow handler and keep the loop from ever reaching its check under Bochs) */
    mov al, 0x30
    out 0x43, al
    mov al, 0xa9
    out 0x40, al
    mov al, 0x04
    out 0x40, al
    sti
    hlt
    /* The VMM ends the STI shadow when it skips the HLT (as hardware does after the HLT), so
     * the interrupt comes in here, before the NOP; the NOP keeps one more instruction with IF=1
     * before CLI either way. An interrupt let in before the HLT (inside the shadow) would
     * return to the HLT with no timer armed: the guest would hang, and the test says so. */
    nop
    cli
wait_end:
    cmp dword ptr [ebp + entries - _start], IRQONCE_COUNT
    jb wait_irq
    mov al, 0xff
    out 0x21, al

    lea esi, [ebp + msg_entries - _start]
    call puts
    mov eax, [ebp + entries - _start]
    call puthex
    lea esi, [ebp + msg_nested - _start]
    call puts
    mov eax, [ebp + nested - _start]
    call puthex
    lea esi, [ebp + msg_nl - _start]
    call puts
poweroff:
    cli
    hlt
    jmp poweroff

handler_20:
    push eax
    push ecx
    mov eax, [esp + 8]
    /* (mov imm32 + add: GAS encodes `lea ecx, [ebp + wait_irq - _start]` here with a zero disp8) */
    mov ecx, offset wait_irq - _start
    add ecx, ebp
    cmp eax, ecx
    jb 3f
    mov ecx, offset wait_end - _start
    add ecx, ebp
    cmp eax, ecx
    jae 3f
    inc dword ptr [ebp + entries - _start]
    mov ecx, SPIN
2:  dec ecx
    jnz 2b
    mov al, 0x20
    out 0x20, al
    pop ecx
    pop eax
    iretd
3:  inc dword ptr [ebp + nested - _start]
    pop ecx
    pop eax
    iretd

/* puts: ESI = NUL-terminated string -> COM1 */
puts:
    mov dx, 0x3f8
4:  lodsb
    test al, al
    jz 5f
    out dx, al
    jmp 4b
5:  ret

/* puthex: EAX as 8 hex digits -> COM1 */
puthex:
    mov ecx, 8
    mov dx, 0x3f8
6:  rol eax, 4
    push eax
    and al, 0xf
    add al, '0'
    cmp al, '9'
    jbe 7f
    add al, 'a' - '9' - 1
7:  out dx, al
    pop eax
    dec ecx
    jnz 6b
    ret

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
    .short 0x21*8 - 1
    .long 0
entries:
    .long 0
nested:
    .long 0
msg_entries: .asciz "irqonce: entries "
msg_nested:  .asciz " nested "
msg_nl:      .asciz "\n"
    .balign 8
idt:
    .fill 0x21*8, 1, 0
