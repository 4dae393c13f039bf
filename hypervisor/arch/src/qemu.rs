//! QEMU's `isa-debug-exit` device (iobase 0xf4): the test kernel ends QEMU with a status.
//! QEMU's exit code is `(value << 1) | 1`; a machine without the device ignores the write.

pub const DEBUG_EXIT_PORT: u16 = 0xf4;

pub fn exit(code: u8) {
    // SAFETY: writing the debug-exit port has no memory effect on real hardware (no device).
    unsafe { x86_64::instructions::port::Port::<u32>::new(DEBUG_EXIT_PORT).write(code as u32) }
}

/// Bochs: the debugger port 0x8a00 (0x8a00 then 0x8ae0) ends the emulator (Bochs tests).
pub fn bochs_shutdown() {
    // SAFETY: the Bochs debug port; ignored by other machines.
    unsafe {
        x86_64::instructions::port::Port::<u16>::new(0x8a00).write(0x8a00);
        x86_64::instructions::port::Port::<u16>::new(0x8a00).write(0x8ae0);
    }
}
