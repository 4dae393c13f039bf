// AP bring-up trampoline (copied to physical 0x8000 by smp.rs; SIPI vector 0x08) and the
// idle loop (the syscall entry is in trap.s, with the trap entry it shares). The trampoline runs 16-bit real mode -> 32-bit protected mode -> long mode on
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

// Idle loop for kernel idle contexts.
.global arch_idle_loop
arch_idle_loop:
    sti
    hlt
    jmp arch_idle_loop
