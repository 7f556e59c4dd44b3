//! The plaintext ext4 image: `mkfs.ext4 -d` from a directory (no root, no loop device), then
//! files added with `debugfs` so the caller's tree is never modified.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Smallest image made (buildah's minimum).
const MIN_IMAGE_BYTES: u64 = 10 << 20;
/// Headroom added to the measured size, so the workload has space to write.
const FIXED_SLOP_BYTES: u64 = 16 << 20;
const BLOCK: u64 = 4096;

/// Errors while making the ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// Walking the root directory failed.
    #[error("cannot read {0}")]
    Walk(String, #[source] std::io::Error),
    /// An e2fsprogs tool could not be started.
    #[error("cannot run {0} (install e2fsprogs)")]
    Spawn(&'static str, #[source] std::io::Error),
    /// An e2fsprogs tool failed.
    #[error("{tool} failed: {output}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// What it printed.
        output: String,
    },
    /// Writing a temporary or output file failed.
    #[error("cannot write {0}")]
    Write(String, #[source] std::io::Error),
    /// A file added with debugfs did not read back identically.
    #[error("{0} did not read back from the new image")]
    Verify(String),
}

/// Bytes the tree under `root` needs in ext4: every file rounded up to blocks plus one block
/// per inode for metadata, which covers trees of many small files that a plain sum of file
/// sizes (what buildah counts) underestimates.
pub fn tree_size(root: &Path) -> Result<u64, Ext4Error> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| Ext4Error::Walk(dir.display().to_string(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Ext4Error::Walk(dir.display().to_string(), e))?;
            let meta = fs::symlink_metadata(entry.path())
                .map_err(|e| Ext4Error::Walk(entry.path().display().to_string(), e))?;
            total = total.saturating_add(BLOCK);
            if meta.is_file() {
                total = total.saturating_add(meta.size().div_ceil(BLOCK) * BLOCK);
            } else if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// The image size for a tree of `tree_bytes`: `slop_percent` on top, plus a fixed headroom,
/// at least [`MIN_IMAGE_BYTES`], rounded up to MiB.
pub fn image_size(tree_bytes: u64, slop_percent: u64) -> u64 {
    let with_slop = tree_bytes.saturating_add(tree_bytes.saturating_mul(slop_percent) / 100);
    let size = with_slop
        .saturating_add(FIXED_SLOP_BYTES)
        .max(MIN_IMAGE_BYTES);
    size.div_ceil(1 << 20) * (1 << 20)
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<String, Ext4Error> {
    let out = cmd.output().map_err(|e| Ext4Error::Spawn(tool, e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(Ext4Error::Tool {
            tool,
            output: text.trim().to_owned(),
        });
    }
    Ok(text)
}

/// A file to place in the image's root directory.
#[derive(Debug)]
pub struct ExtraFile<'a> {
    /// Name in `/`.
    pub name: &'a str,
    /// Contents.
    pub contents: &'a [u8],
    /// Permission bits.
    pub mode: u32,
}

/// Makes `out` (created or truncated to `size` bytes) an ext4 file system holding the tree
/// under `root` plus `extra` files in its root directory, owned by root.
pub fn make_image(
    root: &Path,
    out: &Path,
    size: u64,
    extra: &[ExtraFile],
) -> Result<(), Ext4Error> {
    let shown = out.display().to_string();
    let file = fs::File::create(out).map_err(|e| Ext4Error::Write(shown.clone(), e))?;
    file.set_len(size)
        .map_err(|e| Ext4Error::Write(shown.clone(), e))?;
    drop(file);
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-m",
                "0",
                "-L",
                "krun-root",
                "-d",
            ])
            .arg(root)
            .arg(out),
    )?;
    let parent = out.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".mkcw-staging-")
        .tempdir_in(parent)
        .map_err(|e| Ext4Error::Write(parent.display().to_string(), e))?;
    for file in extra {
        let host = staging.path().join(file.name);
        fs::File::create(&host)
            .and_then(|mut f| f.write_all(file.contents))
            .map_err(|e| Ext4Error::Write(host.display().to_string(), e))?;
        let target = format!("/{}", file.name);
        let script = format!(
            "rm {target}\nwrite {} {}\nsif {target} mode 0{:o}\nsif {target} uid 0\nsif {target} gid 0\n",
            host.display(),
            file.name,
            0o100000 | (file.mode & 0o7777),
        );
        let script_path = staging.path().join("debugfs.cmds");
        fs::write(&script_path, script)
            .map_err(|e| Ext4Error::Write(script_path.display().to_string(), e))?;
        run(
            "debugfs",
            Command::new("debugfs")
                .arg("-w")
                .arg("-f")
                .arg(&script_path)
                .arg(out),
        )?;
        // debugfs exits 0 even when a command fails: read the file back.
        let back = Command::new("debugfs")
            .args(["-R", &format!("cat {target}")])
            .arg(out)
            .output()
            .map_err(|e| Ext4Error::Spawn("debugfs", e))?;
        if back.stdout != file.contents {
            return Err(Ext4Error::Verify(target));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(image_size(0, 25), FIXED_SLOP_BYTES);
        assert_eq!(image_size(100 << 20, 25), (125 << 20) + FIXED_SLOP_BYTES);
        assert_eq!(image_size(1, 0) % (1 << 20), 0);
    }

    #[test]
    fn builds_an_image_with_extra_files() {
        let dir = std::env::temp_dir().join(format!("mkcw-ext4-{}", std::process::id()));
        let root = dir.join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::write(root.join(".krun_config.json"), b"stale").unwrap();
        let img = dir.join("plain.img");
        let size = image_size(tree_size(&root).unwrap(), 25);
        let cfg = br#"{"config":{"Cmd":["/bin/hello"]}}"#;
        make_image(
            &root,
            &img,
            size,
            &[ExtraFile {
                name: ".krun_config.json",
                contents: cfg,
                mode: 0o600,
            }],
        )
        .unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), size);
        let cat = |p: &str| {
            Command::new("debugfs")
                .args(["-R", &format!("cat {p}")])
                .arg(&img)
                .output()
                .unwrap()
                .stdout
        };
        assert_eq!(cat("/bin/hello"), b"#!/bin/sh\necho hi\n");
        assert_eq!(cat("/.krun_config.json"), cfg);
        let stat = Command::new("debugfs")
            .args(["-R", "stat /.krun_config.json"])
            .arg(&img)
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        assert!(stat.contains("Mode:  0600"), "{stat}");
        // The caller's tree is untouched.
        assert_eq!(fs::read(root.join(".krun_config.json")).unwrap(), b"stale");
        fs::remove_dir_all(&dir).unwrap();
    }
}
