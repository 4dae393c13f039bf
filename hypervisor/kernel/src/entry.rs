//! Entry glue: the symbol the boot trampoline calls, the panic handler, and the personality
//! routine the precompiled `core` references. No `unsafe` blocks: only exported symbols.
#![allow(unsafe_code)]

use catenary_arch::{cpu, println, serial};

/// Called by `asm/boot.s` on the boot CPU with the boot protocol and its information pointer.
#[no_mangle]
pub extern "C" fn arch_boot_entry(protocol: u32, info: u64) -> ! {
    crate::init::kernel_main(protocol, info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cpu::disable_interrupts();
    serial::enter_panic_mode();
    match info.location() {
        Some(l) => println!("\n!!! KERNEL PANIC at {}:{}:{}: {}", l.file(), l.line(), l.column(), info.message()),
        None => println!("\n!!! KERNEL PANIC: {}", info.message()),
    }
    #[cfg(feature = "ktest")]
    {
        println!("0 passed, 1 failed");
        catenary_arch::qemu::exit(1);
    }
    cpu::halt_forever()
}

/// The precompiled `core` references this symbol; with `panic = "abort"` it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
