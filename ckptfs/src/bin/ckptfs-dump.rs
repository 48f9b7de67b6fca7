//! `ckptfs-dump`: see `ckptfs-dump --help`. Flags and printing live in `dump_cmd`, the
//! work in `libckpt::criu`.

#[path = "../criu_cmd.rs"]
mod criu_cmd;
#[path = "../dump_cmd.rs"]
mod dump_cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    dump_cmd::dump_main(dump_cmd::DumpCli::parse())
}
