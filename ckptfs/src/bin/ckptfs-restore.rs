//! `ckptfs-restore`: see `ckptfs-restore --help`. Flags and printing live in `restore_cmd`, the
//! work in `libckpt::criu`.

#[path = "../criu_cmd.rs"]
mod criu_cmd;
#[path = "../restore_cmd.rs"]
mod restore_cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    restore_cmd::restore_main(restore_cmd::RestoreCli::parse())
}
