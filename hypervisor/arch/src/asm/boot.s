// Catenary boot trampoline: PVH (Xen ELF note, 32-bit protected mode, EBX = hvm_start_info)
// and Multiboot2 (EAX = 0x36d76289, EBX = MBI) enter here in 32-bit protected mode with paging
// off, at the kernel's physical load address. We switch to long mode on static page tables
// (identity map of the low 4 GiB + the kernel's higher-half window) and call into Rust.
// Limine enters `_start_limine` directly in 64-bit mode on its own page tables.
//
// Every absolute address used before the jump to the higher half is `sym - KERNEL_VIRT`.

.set KERNEL_VIRT, 0xffffffff80000000
.set PROTO_PVH, 1
.set PROTO_MB2, 2
.set PROTO_LIMINE, 3
.set MB2_HEADER_MAGIC, 0xe85250d6
.set MB2_BOOT_MAGIC, 0x36d76289

// ---------------------------------------------------------------- Multiboot2 header
.section .multiboot2, "a"
.balign 8
mb2_header_start:
    .long MB2_HEADER_MAGIC
    .long 0                                   // architecture: i386 protected mode
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (MB2_HEADER_MAGIC + (mb2_header_end - mb2_header_start))
    .balign 8                                 // entry address tag: our 32-bit physical entry
    .short 3
    .short 0
    .long 12
    .long _start32 - KERNEL_VIRT
    .balign 8                                 // end tag
    .short 0
    .short 0
    .long 8
mb2_header_end:

// ---------------------------------------------------------------- PVH ELF note
.section .note.Xen, "a", @note
.balign 4
    .long 4                                   // namesz ("Xen\0")
    .long 4                                   // descsz
    .long 18                                  // XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long _start_pvh - KERNEL_VIRT
    .balign 4

// ---------------------------------------------------------------- 32-bit entry
.section .text.boot, "ax"
.code32
.global _start32
.global _start_pvh
_start_pvh:
    cli
    cld
    mov esi, PROTO_PVH
    mov edi, ebx
    jmp common32

_start32:
    cli
    cld
    cmp eax, MB2_BOOT_MAGIC
    jne boot_fail32
    mov esi, PROTO_MB2
    mov edi, ebx
    jmp common32

boot_fail32:
    // Not a protocol we know: write 'X' to COM1 and halt.
    mov dx, 0x3f8
    mov al, 'X'
    out dx, al
1:  hlt
    jmp 1b

common32:
    mov esp, offset boot_stack_top - KERNEL_VIRT

    // Long mode needs CPUID 0x8000_0001 EDX.LM; NX is used when present.
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb boot_fail32
    mov eax, 0x80000001
    cpuid
    bt edx, 29
    jnc boot_fail32
    mov ebp, edx                              // keep EDX.NX (bit 20) for EFER below

    // CR4: OR in PAE, OSFXSR, OSXMMEXCPT (firmware, e.g. OVMF, may have set other bits).
    mov eax, cr4
    or eax, (1 << 5) | (1 << 9) | (1 << 10)
    mov cr4, eax

    mov eax, offset boot_pml4 - KERNEL_VIRT
    mov cr3, eax

    // EFER: LME (bit 8), NXE (bit 11) when the CPU has NX.
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 8)
    bt ebp, 20
    jnc 2f
    or eax, (1 << 11)
2:  wrmsr

    // CR0: PG | WP | NE | MP | PE; clear CD, NW, EM, TS (caching on, FPU/SSE usable).
    mov eax, cr0
    and eax, ~((1 << 30) | (1 << 29) | (1 << 2) | (1 << 3))
    or eax, (1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | (1 << 0)
    mov cr0, eax

    lgdt [boot_gdt_ptr - KERNEL_VIRT]
    // far jump to 64-bit code segment 0x08 at the physical address of long_mode_low
    mov eax, offset long_mode_low - KERNEL_VIRT
    push 0x08
    push eax
    retf

.code64
long_mode_low:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    movabs rax, offset long_mode_high
    jmp rax

.section .text, "ax"
long_mode_high:
    movabs rsp, offset boot_stack_top
    // rdi = protocol, rsi = physical address of the boot information
    mov eax, esi
    mov esi, edi
    mov edi, eax
    xor ebp, ebp
    call arch_boot_entry
3:  cli
    hlt
    jmp 3b

// ---------------------------------------------------------------- Limine entry (64-bit)
.global _start_limine
_start_limine:
    cli
    cld
    movabs rsp, offset boot_stack_top
    // SSE on: CR0.EM=0, CR0.MP=1, CR4.OSFXSR|OSXMMEXCPT
    mov rax, cr0
    and rax, ~(1 << 2)
    or rax, (1 << 1)
    mov cr0, rax
    mov rax, cr4
    or rax, (1 << 9) | (1 << 10)
    mov cr4, rax
    mov edi, PROTO_LIMINE
    xor esi, esi
    xor ebp, ebp
    call arch_boot_entry
4:  cli
    hlt
    jmp 4b

// Limine AP entry (64-bit, Limine's page tables and stack, interrupts off): RDI = the MP
// response's `struct Cpu`; its `extra` field (offset 24) points at LimineApBoot
// kernel_cr3, stack_top, index (limine.rs). Move to our stack first (Limine's is HHDM-
// mapped, which our tables may not match), enable NX like the BSP, switch to the kernel page
// tables (the kernel image is mapped at the same address in both), join the common AP path.
.global arch_limine_ap_entry
arch_limine_ap_entry:
    cli
    cld
    mov rax, [rdi + 24]
    mov rsp, [rax + 8]
    mov r8, rax
    mov ecx, 0xc0000080
    rdmsr
    or eax, (1 << 11)
    wrmsr
    mov rax, cr0
    or rax, (1 << 16) | (1 << 1)
    and rax, ~(1 << 2)
    mov cr0, rax
    mov rax, cr4
    or rax, (1 << 9) | (1 << 10)
    mov cr4, rax
    mov rax, [r8]
    mov cr3, rax
    mov rdi, [r8 + 16]
    xor ebp, ebp
    call arch_ap_main
5:  cli
    hlt
    jmp 5b

// ---------------------------------------------------------------- boot data
.section .rodata.boot, "a"
.balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                  // 0x08: 64-bit code
    .quad 0x00cf92000000ffff                  // 0x10: data
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt - KERNEL_VIRT

// Static boot page tables: PML4[0] -> identity 0..4 GiB (2 MiB pages),
// PML4[511] -> PDPT[510] -> the first 1 GiB again (the kernel's higher-half window).
.section .data.boot_pt, "aw"
.balign 4096
.global boot_pml4
boot_pml4:
    .quad boot_pdpt_low - KERNEL_VIRT + 0x3
    .fill 510, 8, 0
    .quad boot_pdpt_high - KERNEL_VIRT + 0x3
boot_pdpt_low:
    .quad boot_pd - KERNEL_VIRT + 0x3
    .quad boot_pd - KERNEL_VIRT + 0x1000 + 0x3
    .quad boot_pd - KERNEL_VIRT + 0x2000 + 0x3
    .quad boot_pd - KERNEL_VIRT + 0x3000 + 0x3
    .fill 508, 8, 0
boot_pdpt_high:
    .fill 510, 8, 0
    .quad boot_pd - KERNEL_VIRT + 0x3
    .quad 0
boot_pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr

// The boot stack, with a guard page below it that the kernel leaves unmapped.
.section .bss.boot_stack, "aw", @nobits
.balign 4096
.global boot_stack_guard
boot_stack_guard:
    .skip 4096
.global boot_stack_bottom
boot_stack_bottom:
    .skip 65536
.global boot_stack_top
boot_stack_top:
