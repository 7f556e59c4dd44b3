//! Finding the shared libraries a host binary needs, so that host-built dynamic programs run
//! inside the test host.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from resolving shared libraries.
#[derive(Debug, thiserror::Error)]
pub enum LddError {
    #[error("cannot run ldd on {path}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} needs {library}, which ldd cannot find")]
    NotFound { path: PathBuf, library: String },
}

/// Whether `data` starts like an ELF file.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Absolute paths of the shared libraries (including the dynamic loader) `path` loads.
/// A static binary has none.
pub fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>, LddError> {
    let output = Command::new("ldd")
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| LddError::Spawn {
            path: path.to_path_buf(),
            source,
        })?;
    // ldd exits non-zero for static binaries ("not a dynamic executable").
    if !output.status.success() {
        return Ok(Vec::new());
    }
    parse_ldd(path, &String::from_utf8_lossy(&output.stdout))
}

fn parse_ldd(path: &Path, text: &str) -> Result<Vec<PathBuf>, LddError> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((library, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(LddError::NotFound {
                        path: path.to_path_buf(),
                        library: library.trim().to_owned(),
                    });
                }
                rest
            }
            None => line,
        };
        // "/lib/x86_64-linux-gnu/libc.so.6 (0x...)"; the vDSO has no path.
        let file = target.split(" (").next().unwrap_or_default().trim();
        if file.starts_with('/') {
            libraries.push(PathBuf::from(file));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc1b9e4000)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f3d)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3c)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3e)\n";
        let libs = parse_ldd(Path::new("/bin/x"), text).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn missing_library_is_an_error() {
        let text = "\tlibfoo.so.1 => not found\n";
        assert!(
            matches!(parse_ldd(Path::new("/bin/x"), text), Err(LddError::NotFound { library, .. }) if library == "libfoo.so.1")
        );
    }

    #[test]
    fn real_dynamic_binary_needs_libc_and_static_binary_needs_nothing() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(libs.iter().all(|l| l.exists()));
        // The testhost asset busybox is static; /bin/busybox may not be, so use a non-ELF.
        assert!(shared_libraries(Path::new("/etc/hostname"))
            .unwrap()
            .is_empty());
    }
}
