//! scripts/install-capi.sh into a temporary PREFIX, then the examples
//! built the way users build them, with pkg-config against the installed
//! library (examples/Makefile, PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig), and
//! run with LD_LIBRARY_PATH; a static link of libckpt.a with the flags of
//! `pkg-config --static`; a second install over the first; DESTDIR.

mod capi_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use capi_common::*;

fn install(prefix: &Path, destdir: Option<&Path>) -> Output {
    let b = built();
    let target = b.lib_dir.parent().expect("target dir");
    let mut c = Command::new("bash");
    c.arg(workspace().join("scripts/install-capi.sh"))
        .env("PREFIX", prefix)
        // The profile this test was built with: already built, no release
        // build of the whole engine just for this test.
        .env("PROFILE", &b.profile)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("LIBDIR")
        .env_remove("INCLUDEDIR")
        .env_remove("NO_BUILD")
        .stdin(Stdio::null());
    match destdir {
        Some(d) => c.env("DESTDIR", d),
        None => c.env_remove("DESTDIR"),
    };
    if std::env::var_os("CKPT_CAPI_LIB_DIR").is_some() {
        c.env("BUILD_DIR", &b.lib_dir);
    } else {
        c.env_remove("BUILD_DIR");
    }
    let out = c.output().expect("run install-capi.sh");
    assert!(
        out.status.success(),
        "install-capi.sh failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[track_caller]
fn sh_ok(c: &mut Command, what: &str) -> String {
    let out = c.stdin(Stdio::null()).output().expect(what);
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link_target(p: &Path) -> String {
    fs::read_link(p)
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

fn needed(exe: &Path) -> Vec<String> {
    sh_ok(Command::new("readelf").arg("-d").arg(exe), "readelf -d")
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect()
}

/// The installed tree is complete and says PREFIX.
fn check_tree(root: &Path, prefix: &Path) {
    let lib = root.join("lib");
    let inc = root.join("include");
    assert_eq!(link_target(&lib.join("libckpt.so")), "libckpt.so.0");
    assert_eq!(link_target(&lib.join("libckpt.so.0")), "libckpt.so.0.1.0");
    for f in [
        lib.join("libckpt.so.0.1.0"),
        lib.join("libckpt.a"),
        lib.join("libckpt_fortran.a"),
        inc.join("ckpt.mod"),
        lib.join("pkgconfig/ckpt-fortran.pc"),
    ] {
        assert!(f.is_file(), "{} was not installed", f.display());
    }
    for (installed, source) in [
        ("ckpt.h", "include/ckpt.h"),
        ("ckpt.f90", "include/ckpt.f90"),
    ] {
        assert_eq!(
            fs::read(inc.join(installed)).expect("installed file"),
            fs::read(workspace().join(source)).expect("source file"),
            "{installed} differs from {source}"
        );
    }
    let pc = fs::read_to_string(lib.join("pkgconfig/ckpt.pc")).expect("ckpt.pc");
    assert!(
        pc.contains(&format!("prefix={}\n", prefix.display())),
        "ckpt.pc:\n{pc}"
    );
    assert!(
        !pc.contains('@'),
        "unsubstituted placeholder in ckpt.pc:\n{pc}"
    );
}

#[test]
fn install_then_build_and_run_the_examples_with_pkg_config() {
    let tmp = tempdir("ckpt-capi-install-");
    let prefix = tmp.path().join("prefix");
    let out = install(&prefix, None);
    check_tree(&prefix, &prefix);
    let so = prefix.join("lib/libckpt.so.0.1.0");
    let soname = sh_ok(
        Command::new("readelf").arg("-d").arg(&so),
        "readelf -d libckpt.so",
    );
    assert!(
        soname.contains("Library soname: [libckpt.so.0]"),
        "libckpt.so has no soname libckpt.so.0:\n{soname}"
    );
    // Again, over the first install.
    let again = install(&prefix, None);
    check_tree(&prefix, &prefix);
    println!(
        "install-capi.sh said:\n{}\nand the second time:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&again.stderr)
    );

    let pcpath = prefix.join("lib/pkgconfig");
    let flags = sh_ok(
        Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &pcpath)
            .args(["--cflags", "--libs", "ckpt"]),
        "pkg-config --cflags --libs ckpt",
    );
    assert!(
        flags.contains(&format!("-I{}", prefix.join("include").display()))
            && flags.contains(&format!("-L{}", prefix.join("lib").display()))
            && flags.contains("-lckpt"),
        "pkg-config ckpt: {flags}"
    );

    // The examples, out of the source tree, built by their Makefile.
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir src");
    for f in ["heatdis.c", "heatdis.f90", "Makefile"] {
        fs::copy(workspace().join("examples").join(f), src.join(f)).expect("copy example");
    }
    sh_ok(
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .env("PKG_CONFIG_PATH", &pcpath)
            .env_remove("MAKEFLAGS"),
        "make (pkg-config)",
    );
    let cache = tmp.path().join("cache");
    let config = write_config(tmp.path(), &cache, Mode::Embedded, None);
    let libdir = prefix.join("lib");
    let mut results = Vec::new();
    for exe in ["heatdis", "heatdis_f"] {
        let exe = src.join(exe);
        assert!(
            needed(&exe).iter().any(|n| n == "libckpt.so.0"),
            "{} does not record libckpt.so.0: {:?}",
            exe.display(),
            needed(&exe)
        );
        let mut c = Command::new(&exe);
        single_rank(&mut c)
            .env("LD_LIBRARY_PATH", &libdir)
            .arg(format!("--config={}", config.display()))
            .arg(format!(
                "--job={}",
                exe.file_name().unwrap().to_string_lossy()
            ))
            .args(["--n=32", "--steps=100", "--every=10"]);
        let r = run(c, tmp.path(), &exe.file_name().unwrap().to_string_lossy());
        r.assert_ok(&format!("{} against the installed library", exe.display()));
        assert!(r.stdout.starts_with("rank 0 step 100 "), "{}", r.stdout);
        results.push(r.stdout);
    }

    // Static: libckpt.a and what `pkg-config --static` says it needs.
    let private = sh_ok(
        Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", &pcpath)
            .args(["--static", "--libs-only-l", "ckpt"]),
        "pkg-config --static",
    );
    let exe = src.join("heatdis_static");
    let mut c = Command::new("gcc");
    c.args(["-O2", "-o"])
        .arg(&exe)
        .arg(src.join("heatdis.c"))
        .arg(format!("-I{}", prefix.join("include").display()))
        .arg(libdir.join("libckpt.a"))
        .args(private.split_whitespace().filter(|f| *f != "-lckpt"));
    sh_ok(&mut c, "static link of libckpt.a");
    assert!(
        !needed(&exe).iter().any(|n| n.starts_with("libckpt")),
        "the static build still needs {:?}",
        needed(&exe)
    );
    let mut c = Command::new(&exe);
    single_rank(&mut c)
        .arg(format!("--config={}", config.display()))
        .arg("--job=static")
        .args(["--n=32", "--steps=100", "--every=10"]);
    let r = run(c, tmp.path(), "static");
    r.assert_ok("heatdis linked statically");
    assert_eq!(r.stdout, results[0], "static and shared builds disagree");
}

#[test]
fn destdir_stages_for_the_final_prefix() {
    let tmp = tempdir("ckpt-capi-destdir-");
    let stage = tmp.path().join("stage");
    let prefix = PathBuf::from("/opt/ckpt-capi-test");
    install(&prefix, Some(&stage));
    check_tree(&stage.join("opt/ckpt-capi-test"), &prefix);
    assert!(
        !prefix.exists(),
        "DESTDIR install wrote into {}",
        prefix.display()
    );
}
