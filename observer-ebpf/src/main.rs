//! observer's kernel programs. One module per hook; every map lives in `maps`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics::atomic_xadd is the one BPF atomic add that compiles here")]

mod conn;
mod csum;
#[cfg(feature = "kernel-framer")]
mod frame;
mod http;
mod maps;
mod proto;
mod sock;
mod tc;
mod trace;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is only here to satisfy no_std.
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
