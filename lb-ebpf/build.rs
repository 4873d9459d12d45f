//! Linker options for the BPF object.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // bpf-linker asks LLVM for --bpf-expand-memcpy-in-order by default, which stops LLVM from
    // expanding memset and memmove inline: each one (a FlowKey's zero bytes, an address's
    // IPv4-mapped prefix) became a call to a byte-at-a-time loop, about 30 ns per packet on the
    // established path. Without it, LLVM writes them as plain stores.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
        // Kept global (the linker makes every other function static), so the verifier checks it
        // once on its own: see schedule::xdplb_scan.
        println!("cargo:rustc-link-arg-bins=--export=xdplb_scan");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_conn_write");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_template_write");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_reply_write");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_reply_fetch");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_reply_forget");
        println!("cargo:rustc-link-arg-bins=--export=xdplb_template_fetch");
    }
}
