// Intel VT-x world switch. Called with interrupts off by vmx.rs, with this vCPU's VMCS current.
//   rdi = &mut GuestGprs (rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15; RSP/RIP live in the VMCS)
//   rsi = 0: VMLAUNCH, otherwise VMRESUME
//   rdx = &FpuSwitch (guest_switch.rs): the FPU/SSE/AVX + XCR0 switch (asm/guest_fpu.s)
// Returns eax = 0 after a VM exit, 1 on VMfailValid (read VM_INSTRUCTION_ERROR), 2 on
// VMfailInvalid. HOST_RIP is `arch_vmx_exit`; HOST_RSP is written here, so after an exit the
// stack is exactly as it was at VMLAUNCH/VMRESUME.
.section .text.vmx, "ax"
.global arch_vmx_run
.global arch_vmx_exit
arch_vmx_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdx                    // [rsp+16] fpu switch
    push rsi                    // [rsp+8]  launch/resume
    push rdi                    // [rsp]    gprs
    mov rdi, rdx
    call arch_fpu_to_guest      // host FPU state saved, guest FPU state + XCR0 loaded
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rax, 0x6c14             // HOST_RSP
    vmwrite rax, rsp
    jbe 4f
    mov rax, rdi
    cmp rsi, 0                  // flags survive the MOVs below
    mov rbx, [rax + 8]
    mov rcx, [rax + 16]
    mov rdx, [rax + 24]
    mov rsi, [rax + 32]
    mov rdi, [rax + 40]
    mov rbp, [rax + 48]
    mov r8,  [rax + 56]
    mov r9,  [rax + 64]
    mov r10, [rax + 72]
    mov r11, [rax + 80]
    mov r12, [rax + 88]
    mov r13, [rax + 96]
    mov r14, [rax + 104]
    mov r15, [rax + 112]
    mov rax, [rax + 0]
    jne 1f
    vmlaunch
    jmp 4f
1:  vmresume
4:  // VMfail: CF=1 VMfailInvalid, ZF=1 VMfailValid. Guest values in GPRs are discarded.
    mov eax, 1
    mov ecx, 2
    cmovc eax, ecx
    jmp 3f

arch_vmx_exit:
    // VM exit: RSP = HOST_RSP (the frame above), RFLAGS = 2; GPRs hold the guest's values.
    push rax                    // guest rax; gprs pointer is now at [rsp+8]
    mov rax, [rsp + 8]
    mov [rax + 8], rbx
    mov [rax + 16], rcx
    mov [rax + 24], rdx
    mov [rax + 32], rsi
    mov [rax + 40], rdi
    mov [rax + 48], rbp
    mov [rax + 56], r8
    mov [rax + 64], r9
    mov [rax + 72], r10
    mov [rax + 80], r11
    mov [rax + 88], r12
    mov [rax + 96], r13
    mov [rax + 104], r14
    mov [rax + 112], r15
    pop rbx
    mov [rax + 0], rbx
    xor eax, eax
3:
    mov rbx, rax                // status
    mov rdi, [rsp + 16]
    call arch_fpu_to_host       // guest FPU state saved, host FPU state + XCR0 back
    mov rax, rbx
    add rsp, 24
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
