//! The `#define`s of `include/ckpt.h`, as Rust constants. One macro makes
//! both the constants and [`CONSTANTS`], the table the drift test compares
//! with the header.

use std::os::raw::c_int;

macro_rules! constants {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        $($(#[$doc])* pub const $name: c_int = $value;)*
        /// Every constant of the header, by name.
        pub const CONSTANTS: &[(&str, c_int)] = &[$((stringify!($name), $name)),*];
    };
}

constants! {
    /// The ABI version; libckpt.so.0 implements it.
    CKPT_VERSION_MAJOR = 0;
    CKPT_VERSION_MINOR = 1;
    CKPT_VERSION_PATCH = 0;
    CKPT_SUCCESS = 0;
    /// A bad argument: NULL pointer, negative count, invalid name or version.
    CKPT_ERR_INVALID = -1;
    /// ckpt_init() has not been called (or ckpt_finalize() has).
    CKPT_ERR_NOT_INIT = -2;
    /// The call does not fit the state.
    CKPT_ERR_STATE = -3;
    /// No such protected id, checkpoint name or version.
    CKPT_ERR_NOT_FOUND = -4;
    /// A protected region's size differs from the one in the checkpoint.
    CKPT_ERR_SIZE = -5;
    /// An I/O error in the cache or a tier.
    CKPT_ERR_IO = -6;
    /// The cache is full; earlier complete checkpoints are intact.
    CKPT_ERR_NOSPC = -7;
    /// A checkpoint failed verification (crc32c, format).
    CKPT_ERR_CORRUPT = -8;
    /// The configuration file or the environment is not valid.
    CKPT_ERR_CONFIG = -9;
    /// ckpt_checkpoint_wait() or ckpt_finalize() gave up waiting.
    CKPT_ERR_TIMEOUT = -10;
    /// The buffer given to ckpt_route_file() is too short.
    CKPT_ERR_TRUNCATED = -11;
    /// Mounted mode: the ckptfs daemon refused the request or went away.
    CKPT_ERR_DAEMON = -12;
    /// A bug in libckpt (caught; the process goes on).
    CKPT_ERR_INTERNAL = -13;
    /// Longest path ckpt_route_file() may produce, including the NUL.
    CKPT_MAX_PATH = 4096;
}
