//! Test helper: compiles a C program against the system's kernel UAPI headers and returns
//! what it prints, so struct layouts and ioctl numbers are checked against the headers
//! themselves rather than against numbers copied into Rust. Needs `cc` and linux-libc-dev.

use std::process::Command;

/// Compiles `main` (a C function body printing with printf) after `includes` and runs it.
pub fn run(includes: &[&str], main: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("probe.c");
    let exe = dir.path().join("probe");
    let mut text = String::from("#include <stdio.h>\n#include <stddef.h>\n");
    for inc in includes {
        text.push_str(&format!("#include <{inc}>\n"));
    }
    text.push_str(&format!("int main(void) {{\n{main}\nreturn 0;\n}}\n"));
    std::fs::write(&src, text).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Parses `name=value` lines into pairs.
pub fn values(output: &str) -> Vec<(String, u64)> {
    output
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.trim().parse().unwrap())
        })
        .collect()
}
