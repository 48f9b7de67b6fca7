//! include/ckpt.h is the contract; this test fails when it and the Rust
//! side drift apart: a `#define CKPT_*` whose value differs from the Rust
//! constant (or exists on one side only), or a prototype that is renamed,
//! missing, extra, or differs in a parameter or return type from the
//! `extern "C"` function exported in capi/src.
//!
//! Both sides are parsed into normalised signatures ("c_int ckpt_init(
//! *const c_char, *const c_char)"), C types mapped to the Rust ones they
//! must be: int↔c_int, size_t↔usize, const char*↔*const c_char,
//! char*↔*mut c_char, void*↔*mut c_void, int*↔*mut c_int.

use std::collections::BTreeMap;
use std::path::Path;

type Sigs = BTreeMap<String, String>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The C text without comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..].split_once("*/").map_or("", |(_, r)| r);
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].split_once('\n').map_or("", |(_, r)| r);
                out.push('\n');
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

fn c_type(t: &str) -> Result<String, String> {
    let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    let t = t.replace(" *", "*").replace("* ", "*");
    Ok(match t.as_str() {
        "int" => "c_int",
        "size_t" => "usize",
        "const char*" => "*const c_char",
        "char*" => "*mut c_char",
        "void*" => "*mut c_void",
        "const void*" => "*const c_void",
        "int*" => "*mut c_int",
        "void" => "()",
        other => return Err(format!("unmapped C type {other:?}")),
    }
    .to_owned())
}

/// `#define CKPT_*` values and `ckpt_*` prototypes of a header.
fn parse_header(text: &str) -> Result<(BTreeMap<String, i64>, Sigs), String> {
    let text = strip_comments(text);
    let mut defines = BTreeMap::new();
    let mut body = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(def) = l.strip_prefix("#define ") {
            let mut it = def.split_whitespace();
            let (Some(name), Some(value)) = (it.next(), it.next()) else {
                continue;
            };
            if name.starts_with("CKPT_") && name != "CKPT_H" {
                let v = value
                    .trim_matches(|c| c == '(' || c == ')')
                    .parse::<i64>()
                    .map_err(|e| format!("#define {name} {value}: {e}"))?;
                defines.insert(name.to_owned(), v);
            }
        } else if !l.starts_with('#') {
            body.push_str(l);
            body.push(' ');
        }
    }
    // The C++ guard's braces are no declarations.
    let body = body.replace("extern \"C\" {", " ").replace('}', " ");
    let mut sigs = Sigs::new();
    for stmt in body.split(';') {
        if !stmt.contains("ckpt_") {
            continue;
        }
        let stmt = stmt.trim().trim_start_matches('}').trim();
        let Some(paren) = stmt.find('(') else {
            continue;
        };
        let head = stmt[..paren].trim();
        let name_at = head
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let (ret, name) = (&head[..name_at], &head[name_at..]);
        if !name.starts_with("ckpt_") {
            continue;
        }
        let params = stmt[paren + 1..].trim_end().trim_end_matches(')');
        let mut types = Vec::new();
        if params.trim() != "void" && !params.trim().is_empty() {
            for p in params.split(',') {
                // Drop the parameter's name: the last identifier.
                let p = p.trim();
                let cut = p
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |i| i + 1);
                types.push(c_type(&p[..cut])?);
            }
        }
        sigs.insert(
            name.to_owned(),
            format!("{} {name}({})", c_type(ret)?, types.join(", ")),
        );
    }
    Ok((defines, sigs))
}

/// The `#[no_mangle] pub [unsafe] extern "C" fn`s of Rust source text.
fn parse_rust(text: &str) -> Result<Sigs, String> {
    let mut sigs = Sigs::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[no_mangle]") {
        rest = &rest[at + 12..];
        let Some(fn_at) = rest.find("extern \"C\" fn ") else {
            break;
        };
        let after = &rest[fn_at + 14..];
        let open = after.find('(').ok_or("no parameter list")?;
        let name = after[..open].trim().to_owned();
        // The parameter list ends at the matching parenthesis.
        let mut depth = 0;
        let mut close = None;
        for (i, ch) in after[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or("unbalanced parameter list")?;
        let params = &after[open + 1..close];
        let tail = &after[close + 1..];
        let ret = tail[..tail.find('{').ok_or("no body")?].trim();
        let ret = ret.strip_prefix("->").map_or("()", str::trim);
        let types: Vec<String> = params
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let ty = p.split_once(':').map_or(p, |(_, t)| t);
                ty.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        sigs.insert(name.clone(), format!("{ret} {name}({})", types.join(", ")));
    }
    Ok(sigs)
}

/// Every disagreement between a header and the Rust side.
fn drift(header: &str, rust: &Sigs, constants: &[(&str, i32)]) -> Vec<String> {
    let (defines, c_sigs) = match parse_header(header) {
        Ok(x) => x,
        Err(e) => return vec![format!("header: {e}")],
    };
    let mut problems = Vec::new();
    let rust_consts: BTreeMap<&str, i64> =
        constants.iter().map(|(n, v)| (*n, i64::from(*v))).collect();
    for (name, v) in &defines {
        match rust_consts.get(name.as_str()) {
            None => problems.push(format!("{name} is in ckpt.h but not in capi/src/codes.rs")),
            Some(r) if r != v => problems.push(format!("{name} is {v} in ckpt.h but {r} in Rust")),
            _ => {}
        }
    }
    for name in rust_consts.keys() {
        if !defines.contains_key(*name) {
            problems.push(format!("{name} is in Rust but not in ckpt.h"));
        }
    }
    for (name, sig) in &c_sigs {
        match rust.get(name) {
            None => problems.push(format!("{name} is declared in ckpt.h but not exported")),
            Some(r) if r != sig => problems.push(format!("ckpt.h: {sig}\n   Rust: {r}")),
            _ => {}
        }
    }
    for name in rust.keys() {
        if !c_sigs.contains_key(name) {
            problems.push(format!("{name} is exported but not declared in ckpt.h"));
        }
    }
    problems
}

fn rust_side() -> Sigs {
    let mut all = Sigs::new();
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            all.extend(parse_rust(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        }
    }
    all
}

fn header() -> String {
    std::fs::read_to_string(root().join("../include/ckpt.h")).expect("include/ckpt.h")
}

#[test]
fn header_and_rust_agree() {
    let rust = rust_side();
    assert!(rust.len() >= 17, "found only {rust:?}");
    let problems = drift(&header(), &rust, ckpt::CONSTANTS);
    assert!(
        problems.is_empty(),
        "include/ckpt.h and capi/src disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_catches_each_kind_of_drift() {
    let h = header();
    let rust = rust_side();
    assert!(drift(&h, &rust, ckpt::CONSTANTS).is_empty());
    let cases = [
        (
            "renamed function",
            h.replace("int ckpt_restart_test(", "int ckpt_restart_probe("),
        ),
        (
            "changed parameter type",
            h.replace(
                "ckpt_mem_protect(int id, void *ptr, size_t count",
                "ckpt_mem_protect(int id, void *ptr, int count",
            ),
        ),
        (
            "changed return type",
            h.replace(
                "const char *ckpt_last_error(void)",
                "char *ckpt_last_error(void)",
            ),
        ),
        (
            "missing function",
            h.replace("int ckpt_checkpoint_wait(void);", ""),
        ),
        (
            "extra function",
            h.replace(
                "int ckpt_finalize(void);",
                "int ckpt_finalize(void);\nint ckpt_flush(int how);",
            ),
        ),
        (
            "changed code",
            h.replace("#define CKPT_ERR_SIZE -5", "#define CKPT_ERR_SIZE -50"),
        ),
        (
            "extra code",
            h.replace(
                "#define CKPT_SUCCESS 0",
                "#define CKPT_SUCCESS 0\n#define CKPT_ERR_NEW -99",
            ),
        ),
        ("missing code", h.replace("#define CKPT_ERR_DAEMON -12", "")),
    ];
    for (what, mutated) in cases {
        assert_ne!(mutated, h, "{what}: the mutation did not apply");
        let problems = drift(&mutated, &rust, ckpt::CONSTANTS);
        assert!(!problems.is_empty(), "{what} went unnoticed");
    }
    // And on the Rust side: a function renamed or retyped in the source.
    let mut renamed = rust.clone();
    let sig = renamed.remove("ckpt_finalize").unwrap();
    renamed.insert(
        "ckpt_finalise".into(),
        sig.replace("ckpt_finalize", "ckpt_finalise"),
    );
    assert!(!drift(&h, &renamed, ckpt::CONSTANTS).is_empty());
    let retyped =
        parse_rust("#[no_mangle]\npub extern \"C\" fn ckpt_mem_unprotect(id: usize) -> c_int {}")
            .unwrap();
    let mut r2 = rust.clone();
    r2.extend(retyped);
    assert!(!drift(&h, &r2, ckpt::CONSTANTS).is_empty());
}
