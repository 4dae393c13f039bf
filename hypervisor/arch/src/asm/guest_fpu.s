// The host <-> guest FPU/SSE/AVX and XCR0 switch shared by the SVM and VMX world switches
// (svm.s, vmx.s call these right next to VMRUN / VMLAUNCH, so no compiled code that may use
// SSE runs between the switch and the guest). rdi = &FpuSwitch (guest_switch.rs):
//   [rdi+0] host area, [rdi+8] guest area (64-byte aligned), [rdi+16] host XCR0,
//   [rdi+24] guest XCR0, [rdi+32] 1 = XSAVE/XRSTOR + XCR0 switch, 0 = FXSAVE/FXRSTOR only.
// Both areas are saved and restored with the host's XCR0 mask (the guest's XCR0 is a subset of
// it): legacy SSE works whatever XCR0 says, so saving only what the guest's XCR0 names would
// lose its xmm registers when it never set XCR0.SSE. XCR0 itself is switched while the guest
// runs (as KVM does). Clobbers rax, rcx, rdx. Interrupts are off.
.section .text.guest_fpu, "ax"
.global arch_fpu_to_guest
.global arch_fpu_to_host
arch_fpu_to_guest:
    cmp qword ptr [rdi + 32], 0
    je 1f
    mov eax, [rdi + 16]
    mov edx, [rdi + 20]
    mov rcx, [rdi + 0]
    xsave64 [rcx]               // host state, every component the host enabled
    mov rcx, [rdi + 8]
    xrstor64 [rcx]              // guest state, same components (guest XCR0 is a subset)
    mov rax, [rdi + 24]
    cmp rax, [rdi + 16]
    je 2f
    mov edx, [rdi + 28]
    xor ecx, ecx
    xsetbv                      // XCR0 = guest XCR0
2:  ret
1:  mov rcx, [rdi + 0]
    fxsave64 [rcx]
    mov rcx, [rdi + 8]
    fxrstor64 [rcx]
    ret

arch_fpu_to_host:
    cmp qword ptr [rdi + 32], 0
    je 1f
    xor ecx, ecx
    xgetbv                      // the XCR0 the guest ran with: kept (an emulator may not
    mov [rdi + 24], eax         // honour the XSETBV intercept), and never left to the host
    mov [rdi + 28], edx
    mov rax, [rdi + 16]
    cmp rax, [rdi + 24]
    je 2f
    mov edx, [rdi + 20]
    xor ecx, ecx
    xsetbv                      // XCR0 = host XCR0
2:  mov eax, [rdi + 16]
    mov edx, [rdi + 20]
    mov rcx, [rdi + 8]
    xsave64 [rcx]               // guest state, every component the host enabled
    mov rcx, [rdi + 0]
    xrstor64 [rcx]              // host state
    ret
1:  mov rcx, [rdi + 8]
    fxsave64 [rcx]
    mov rcx, [rdi + 0]
    fxrstor64 [rcx]
    ret
