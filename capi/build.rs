//! libckpt.so carries its ABI major version in its soname, so programs
//! linked against it keep working across compatible releases.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libckpt.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
