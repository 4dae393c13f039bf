// AP bring-up trampoline (copied to physical 0x8000 by smp.rs; SIPI vector 0x08) and the
// syscall entry. The trampoline runs 16-bit real mode -> 32-bit protected mode -> long mode on
// the static boot page tables (identity map of the low 4 GiB + the kernel window), jumps to
// the kernel's higher half, switches to the kernel page tables and calls `arch_ap_main`.
.set TRAMP, 0x8000
.set KERNEL_VIRT, 0xffffffff80000000

.section .rodata.ap_tramp, "a"
.balign 16
.global arch_ap_tramp_start
.global arch_ap_tramp_end
.global arch_ap_tramp_data
arch_ap_tramp_start:
.code16
    cli
    cld
    xor ax, ax
    mov ds, ax
    lgdt [TRAMP + 0x120]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                      // ljmp 0x08:pm32 (32-bit offset)
    .long TRAMP + (ap_pm32 - arch_ap_tramp_start)
    .word 0x08
.code32
ap_pm32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)   // PAE, OSFXSR, OSXMMEXCPT
    mov cr4, eax
    mov eax, [TRAMP + 0x140]
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8) | (1 << 11)             // LME, NXE
    wrmsr
    mov eax, cr0
    and eax, ~((1 << 30) | (1 << 29) | (1 << 2) | (1 << 3))
    or eax, (1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | (1 << 0)
    mov cr0, eax
    .byte 0xea                                // ljmp 0x18:lm64
    .long TRAMP + (ap_lm64 - arch_ap_tramp_start)
    .word 0x18
.code64
ap_lm64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rax, [TRAMP + 0x148]
    jmp rax
.org 0x100
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                  // 0x08: 32-bit code
    .quad 0x00cf92000000ffff                  // 0x10: data
    .quad 0x00af9a000000ffff                  // 0x18: 64-bit code
.org 0x120
ap_gdt_ptr:
    .short 31
    .long TRAMP + (ap_gdt - arch_ap_tramp_start)
.org 0x140
arch_ap_tramp_data:
ap_boot_cr3:    .quad 0                       // +0  boot page tables (below 4 GiB)
ap_entry:       .quad 0                       // +8  arch_ap_entry64 (higher half)
ap_kernel_cr3:  .quad 0                       // +16 kernel page tables
ap_stack:       .quad 0                       // +24 stack top
ap_cpu:         .quad 0                       // +32 cpu index
arch_ap_tramp_end:

.section .text, "ax"
.global arch_ap_entry64
arch_ap_entry64:
    mov rsi, TRAMP + 0x140
    mov rax, [rsi + 16]
    mov rsp, [rsi + 24]
    mov rdi, [rsi + 32]
    mov cr3, rax
    xor ebp, ebp
    call arch_ap_main
1:  cli
    hlt
    jmp 1b

// ---- syscall entry: builds the same TrapFrame as trap_common (vector 0x100), on the
// per-CPU syscall stack (gs:8), with the FXSAVE area right below the frame. Returns with iretq
// because the handler may have switched the frame to another task (kernel or user).
.global arch_syscall_entry
arch_syscall_entry:
    swapgs
    mov gs:[16], rsp
    mov rsp, gs:[8]
    push 0x1b                                 // user SS
    push qword ptr gs:[16]                    // user RSP
    push r11                                  // RFLAGS
    push 0x23                                 // user CS
    push rcx                                  // RIP
    push 0
    push 0x100
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rbx, rsp
    and rsp, ~0x3f
    sub rsp, 1024
    // FPU/SSE/AVX state below the frame: XSAVE (x87|SSE|AVX per XCR0) when enabled, else FXSAVE.
    cmp byte ptr [rip + ARCH_XSAVE_ON], 0
    je 91f
    xor eax, eax
    // XSAVE header: XSAVE writes only the XSTATE_BV bits in RFBM and leaves the rest of the
    // header as it was (stack garbage on real or firmware-touched memory), but XRSTOR faults on
    // XSTATE_BV bits outside XCR0 and on non-zero header bytes 8..63: clear all 64 bytes.
    mov [rsp + 512], rax
    mov [rsp + 520], rax
    mov [rsp + 528], rax
    mov [rsp + 536], rax
    mov [rsp + 544], rax
    mov [rsp + 552], rax
    mov [rsp + 560], rax
    mov [rsp + 568], rax
    mov eax, -1
    mov edx, -1
    xsave64 [rsp]
    jmp 92f
91: fxsave64 [rsp]
92:
    mov rdi, rbx
    call arch_syscall_dispatch
    cmp byte ptr [rip + ARCH_XSAVE_ON], 0
    je 93f
    mov eax, -1
    mov edx, -1
    xrstor64 [rsp]
    jmp 94f
93: fxrstor64 [rsp]
94:
    mov rsp, rbx
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    test qword ptr [rsp + 24], 3
    jz 2f
    swapgs
2:  add rsp, 16
    iretq

// Idle loop for kernel idle contexts.
.global arch_idle_loop
arch_idle_loop:
    sti
    hlt
    jmp arch_idle_loop
