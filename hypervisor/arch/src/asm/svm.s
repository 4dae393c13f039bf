// AMD SVM world switch. Called with interrupts off and GIF cleared by the caller (svm.rs).
//   rdi = guest VMCB physical address
//   rsi = &mut GuestGprs (rbx, rcx, rdx, rsi, rdi, rbp, r8..r15; RAX/RSP live in the VMCB)
//   rdx = host VMSAVE area physical address
//   rcx = &FpuSwitch (guest_switch.rs): the FPU/SSE/AVX + XCR0 switch (asm/guest_fpu.s)
// VMRUN saves the host's RAX/RSP/RIP/RFLAGS/CR*/EFER/segments to the HSAVE area and restores
// them on #VMEXIT; VMSAVE/VMLOAD switch what VMRUN does not (FS/GS/TR/LDTR hidden state,
// KernelGsBase, STAR/LSTAR/CSTAR/SFMASK, SYSENTER_*).
.section .text.svm, "ax"
.global arch_svm_run
arch_svm_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rcx                    // [rsp+24] fpu switch
    push rdx                    // [rsp+16] host vmsave pa
    push rsi                    // [rsp+8]  gprs
    push rdi                    // [rsp]    vmcb pa
    mov rdi, rcx
    call arch_fpu_to_guest      // host FPU state saved, guest FPU state + XCR0 loaded
    mov rax, [rsp + 16]
    vmsave rax                  // host hidden state
    mov rax, [rsp]
    vmload rax                  // guest hidden state
    mov rax, [rsp + 8]
    mov rbx, [rax + 0]
    mov rcx, [rax + 8]
    mov rdx, [rax + 16]
    mov rsi, [rax + 24]
    mov rdi, [rax + 32]
    mov rbp, [rax + 40]
    mov r8,  [rax + 48]
    mov r9,  [rax + 56]
    mov r10, [rax + 64]
    mov r11, [rax + 72]
    mov r12, [rax + 80]
    mov r13, [rax + 88]
    mov r14, [rax + 96]
    mov r15, [rax + 104]
    mov rax, [rsp]
    vmrun rax
    // #VMEXIT: RSP/RAX are the host's again (RAX = VMCB pa); other GPRs hold guest values.
    // Disarm breakpoints at once (the guest's DR7 is saved in its VMCB) in case the CPU left
    // the guest's DR7 loaded: guest breakpoints must never fire in the host.
    mov eax, 0x400
    mov dr7, rax
    mov rax, [rsp + 8]
    mov [rax + 0], rbx
    mov [rax + 8], rcx
    mov [rax + 16], rdx
    mov [rax + 24], rsi
    mov [rax + 32], rdi
    mov [rax + 40], rbp
    mov [rax + 48], r8
    mov [rax + 56], r9
    mov [rax + 64], r10
    mov [rax + 72], r11
    mov [rax + 80], r12
    mov [rax + 88], r13
    mov [rax + 96], r14
    mov [rax + 104], r15
    mov rax, [rsp]
    vmsave rax                  // guest hidden state back into its VMCB
    mov rax, [rsp + 16]
    vmload rax                  // host hidden state
    mov rdi, [rsp + 24]
    call arch_fpu_to_host       // guest FPU state saved, host FPU state + XCR0 back
    add rsp, 32
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
