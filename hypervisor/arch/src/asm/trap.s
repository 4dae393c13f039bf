// Interrupt/exception entry stubs for all 256 vectors. Every IDT gate runs on an IST stack
// (the precompiled core uses the red zone), so a stub never lands on the interrupted stack.
// The stub pushes a dummy error code where the CPU pushes none, then the vector, then all
// GPRs, and saves the FPU/SSE state (Rust handlers may use SSE: into the task's own area for a
// ring-3 entry, else below the frame) before calling Rust with a pointer to the TrapFrame,
// which the handler may modify (fault recovery, context switch).
.section .text.trap, "ax"

.macro TRAP_NOERR vec
    .balign 16
    push 0
    push \vec
    jmp trap_common
.endm
.macro TRAP_ERR vec
    .balign 16
    push \vec
    jmp trap_common
.endm

.balign 16
.global arch_trap_stubs
arch_trap_stubs:
.set v, 0
.rept 256
    .if (v == 8) || (v == 10) || (v == 11) || (v == 12) || (v == 13) || (v == 14) || (v == 17) || (v == 21) || (v == 29) || (v == 30)
        TRAP_ERR v
    .else
        TRAP_NOERR v
    .endif
    .set v, v + 1
.endr

// The one entry/exit sequence of the kernel. Interrupts and exceptions come here from the
// stubs above; `syscall` comes from `arch_syscall_entry` below with the same frame layout
// (vector 0x100) and GS already switched. Both leave through the same restore, then `iretq`
// or, for a ring-3 frame saved by `syscall` (which may be another task's after a switch),
// `sysretq`.
trap_common:
    // EFLAGS.AC is not cleared by interrupt or exception delivery: with the user's AC set,
    // SMAP would be off in the kernel. Clear it on every entry, not only on entries from
    // ring 3: an NMI that lands between a ring-3 interrupt's delivery and this clear is a
    // ring-0 entry that still carries the user's AC (the syscall fuzzer saw one). The kernel
    // never sets AC, so clearing it is always right; `syscall` clears it through SFMASK.
    // pushfq/popfq works with or without SMAP and keeps IF as the gate left it; the stack is
    // as it was after, so the saved CS below is still at +24.
    pushfq
    and qword ptr [rsp], ~(1 << 18)
    popfq
    // From ring 3 (saved CS at +24): switch GS to the kernel's per-CPU block.
    test qword ptr [rsp + 24], 3
    jz trap_gs_ok
    swapgs
trap_gs_ok:
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
    mov rbx, rsp                 // rbx = &mut TrapFrame (callee-saved)
    and rsp, ~0x3f
    sub rsp, 1024
    // FPU/SSE/AVX state. A ring-3 entry saves it into the running task's own area, which
    // gs:[56] names (`context::switch` sets it when it loads a ring-3 task: a switch then
    // moves a pointer, not the image); every other entry (ring 0: a kernel or vCPU task, the
    // idle loop, a nested entry, or ring 3 with no area set) below the frame, as before.
    // gs:[56] is read only for ring-3 entries (GS already swapped; an NMI in ring 0 may run
    // with the user's GS). XSAVE (x87|SSE|AVX per XCR0) when enabled, else FXSAVE.
    test qword ptr [rbx + 144], 3   // saved CS
    jz 95f
    mov rcx, gs:[56]
    test rcx, rcx
    jz 95f
    cmp byte ptr [rip + ARCH_XSAVE_ON], 0
    je 96f
    mov eax, -1
    mov edx, -1
    // The area's header is valid (bytes 8..63 zero: `default_fx`, or an image this stub
    // saved below a frame); XSAVE/XSAVEOPT write only XSTATE_BV of it.
    cmp byte ptr [rip + ARCH_XSAVEOPT_ON], 0
    je 97f
    xsaveopt64 [rcx]
    jmp 92f
97: xsave64 [rcx]
    jmp 92f
96: fxsave64 [rcx]
    jmp 92f
95:
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
    call arch_trap_dispatch
    // Restore from where the frame we return to keeps it (the same rule as on entry, for the
    // frame now there, which may be another task's after a switch).
    test qword ptr [rbx + 144], 3
    jz 95f
    mov rcx, gs:[56]
    test rcx, rcx
    jz 95f
    cmp byte ptr [rip + ARCH_XSAVE_ON], 0
    je 96f
    mov eax, -1
    mov edx, -1
    xrstor64 [rcx]
    jmp 94f
96: fxrstor64 [rcx]
    jmp 94f
95:
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
    // Back to ring 3 (the frame may now be another task's): restore the user GS.
    test qword ptr [rsp + 24], 3
    jz 2f
    // `sysretq` where it is safe, `iretq` otherwise. Safe for a frame saved by `syscall`
    // (vector 0x100: its rcx and r11 are the syscall ABI's to clobber, so they can carry RIP
    // and RFLAGS), never for a task preempted by an interrupt or fault (every register is
    // live). RIP must be in the user half: on Intel a non-canonical RCX faults in ring 0 on
    // the user's stack and GS (the dispatcher already kills a task returning there; checked
    // again here). CS/SS come from STAR (the user selectors every ring-3 frame has); RFLAGS
    // from the frame (a ring-3 frame never holds IOPL, VM, VIF, VIP: `context::switch`). An
    // NMI between `mov rsp` and `sysretq` runs on its IST stack and reads no per-CPU data
    // (it sees ring 0 with the user's GS, as at `syscall` entry). (AMD leaves SS's hidden
    // attributes as they were after a ring-0 interrupt; 64-bit code does not use them.)
    cmp qword ptr [rsp], 0x100
    jne 1f
    mov rcx, [rsp + 16]          // RIP
    mov r11, rcx
    shr r11, 47
    jnz 1f
    mov r11, [rsp + 32]          // RFLAGS
    mov rsp, [rsp + 40]          // user RSP
    swapgs
    sysretq
1:  swapgs
2:  add rsp, 16                  // vector + error code
    iretq

// ---- syscall entry: builds the trap frame `trap_common` would (vector 0x100) on the per-CPU
// syscall stack (gs:8) and joins it. SFMASK cleared IF, TF, DF, AC and NT.
.global arch_syscall_entry
arch_syscall_entry:
    swapgs
    mov gs:[16], rsp
    mov rsp, gs:[8]
    push 0x1b                    // user SS
    push qword ptr gs:[16]       // user RSP
    push r11                     // RFLAGS
    push 0x23                    // user CS
    push rcx                     // RIP
    push 0
    push 0x100
    jmp trap_gs_ok

// ---- fault-recovering probes (used by tests and by code that touches untrusted addresses)
// u64 arch_probe_read(addr) -> rax = byte, rdx = 0 on success / 1 after a recovered fault
.global arch_probe_read
.global arch_probe_read_insn
.global arch_probe_write
.global arch_probe_write_insn
.global arch_probe_exec
.global arch_probe_resume
arch_probe_read:
    xor edx, edx
    xor eax, eax
arch_probe_read_insn:
    movzx eax, byte ptr [rdi]
    jmp arch_probe_resume
arch_probe_write:
    xor edx, edx
    mov eax, esi
arch_probe_write_insn:
    mov byte ptr [rdi], al
    jmp arch_probe_resume
arch_probe_exec:
    xor edx, edx
    call rdi
arch_probe_resume:
    ret
