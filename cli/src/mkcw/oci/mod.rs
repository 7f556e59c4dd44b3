//! `krun-sev mkcw --oci-archive FILE` / `--oci DIR`: the workload as an OCI image whose one
//! layer is buildah mkcw's root file system (`/entrypoint`, `/krun-sev.json`, `/disk.img`,
//! `/tmp`), config `Entrypoint ["/entrypoint"]`, so that `podman load` and
//! `podman run --runtime krun` take it like an image buildah made.

mod entrypoint;
mod layout;
mod tar;

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use self::layout::BlobId;
use self::tar::TarWriter;

/// The image name `--tag` defaults to.
pub const DEFAULT_TAG: &str = "localhost/krun-sev-workload:latest";
/// The image config's entrypoint.
const ENTRYPOINT: &str = "/entrypoint";

/// Errors of the OCI output.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image name is not NAME[:TAG].
    #[error("invalid image name {0:?}: {1}")]
    Tag(String, &'static str),
    /// `--oci DIR` exists with something in it.
    #[error("{0} exists and is not empty (an OCI layout directory is written whole)")]
    NotEmpty(String),
    /// A JSON document could not be encoded.
    #[error("cannot encode the image JSON: {0}")]
    Json(String),
    /// The layer's inputs changed while the archive was written.
    #[error("cannot write {0}: the disk image changed while the archive was being written")]
    Changed(String),
    /// A file could not be read or written.
    #[error("cannot write {0}")]
    Io(String, #[source] io::Error),
}

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tar of the layout (`podman load -i FILE`, `oci-archive:FILE`).
    Archive(PathBuf),
    /// A layout directory (`oci:DIR`).
    Dir(PathBuf),
}

/// The files of the layer: the TEE config and the encrypted disk, both from mkcw's output.
#[derive(Debug)]
pub struct Workload<'a> {
    pub krun_sev_json: &'a [u8],
    pub disk: &'a Path,
}

/// Writes the image; returns the manifest digest (`sha256:…`).
pub fn write(target: &Target, tag: &str, workload: &Workload<'_>) -> Result<String, OciError> {
    let tag = normalize_tag(tag)?;
    // Checked up front: a missing disk is a clear error, not a half-written layout.
    File::open(workload.disk).map_err(|e| OciError::Io(workload.disk.display().to_string(), e))?;
    let layer = |w: &mut dyn Write| write_layer(workload, w);
    let manifest: BlobId = match target {
        Target::Archive(file) => layout::write_archive(file, &[ENTRYPOINT], &tag, &layer)?,
        Target::Dir(dir) => layout::write_dir(dir, &[ENTRYPOINT], &tag, &layer)?,
    };
    Ok(manifest.digest())
}

/// The layer tar, in name order, every member 0:0 with a fixed mtime (tar.rs): the root
/// directory 0555 and the two workload files 0600 as buildah mkcw's image has them, the
/// entrypoint 0755, `/tmp` 1777.
fn write_layer(workload: &Workload<'_>, out: &mut dyn Write) -> io::Result<()> {
    let disk = File::open(workload.disk).map_err(|e| with_path(workload.disk, e))?;
    let size = disk
        .metadata()
        .map_err(|e| with_path(workload.disk, e))?
        .len();
    let mut t = TarWriter::new(out);
    t.dir("./", 0o555)?;
    t.file_from(
        "disk.img",
        0o600,
        size,
        &mut BufReader::with_capacity(1 << 20, disk),
    )
    .map_err(|e| with_path(workload.disk, e))?;
    t.file("entrypoint", 0o755, &entrypoint::elf())?;
    t.file("krun-sev.json", 0o600, workload.krun_sev_json)?;
    t.dir("tmp/", 0o1777)?;
    t.finish().map(|_| ())
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `NAME[:TAG]` with `:latest` added when there is no tag. NAME is a lowercase reference
/// path (`[a-z0-9._-]` components separated by `/`, the first may be a registry host with a
/// port); TAG is `[A-Za-z0-9_.-]`, at most 128, not starting with `.` or `-`.
pub fn normalize_tag(name: &str) -> Result<String, OciError> {
    let bad = |why| Err(OciError::Tag(name.to_string(), why));
    if name.contains('@') {
        return bad("digests are not image names; give NAME[:TAG]");
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    };
    if tag.is_empty()
        || tag.len() > 128
        || tag.starts_with(['.', '-'])
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return bad("the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -");
    }
    let components: Vec<&str> = repo.split('/').collect();
    for (i, c) in components.iter().enumerate() {
        let host = i == 0 && components.len() > 1;
        let ok = !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase()
                    || ch.is_ascii_digit()
                    || "._-".contains(ch)
                    || (host && (ch == ':' || ch.is_ascii_uppercase()))
            });
        if !ok {
            return bad("the name must be lowercase [a-z0-9._-] components separated by /");
        }
    }
    Ok(format!("{repo}:{tag}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn tags() {
        assert_eq!(normalize_tag("foo").unwrap(), "foo:latest");
        assert_eq!(normalize_tag(DEFAULT_TAG).unwrap(), DEFAULT_TAG);
        assert_eq!(
            normalize_tag("localhost:5000/a/b_c:v1.2").unwrap(),
            "localhost:5000/a/b_c:v1.2"
        );
        assert_eq!(
            normalize_tag("localhost:5000/a").unwrap(),
            "localhost:5000/a:latest"
        );
        for bad in [
            "",
            "Foo",
            "foo:",
            "foo:-x",
            "a//b",
            "foo@sha256:00",
            "foo/",
            "-a",
            "a b",
        ] {
            assert!(normalize_tag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_layer_is_buildahs_rootfs_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let disk_bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk, &disk_bytes).unwrap();
        let w = Workload {
            krun_sev_json: br#"{"workload_id":"x"}"#,
            disk: &disk,
        };
        let mut a = Vec::new();
        write_layer(&w, &mut a).unwrap();
        let mut b = Vec::new();
        write_layer(&w, &mut b).unwrap();
        assert_eq!(a, b, "the same inputs make the same layer");
        let members = tar::list(&a);
        let summary: Vec<_> = members
            .iter()
            .map(|m| (m.name.as_str(), m.mode, m.is_dir))
            .collect();
        assert_eq!(
            summary,
            [
                ("./", 0o555, true),
                ("disk.img", 0o600, false),
                ("entrypoint", 0o755, false),
                ("krun-sev.json", 0o600, false),
                ("tmp/", 0o1777, true),
            ]
        );
        assert!(members
            .iter()
            .all(|m| m.uid == 0 && m.gid == 0 && m.mtime == tar::MTIME));
        assert_eq!(members[1].data, disk_bytes);
        assert_eq!(members[2].data, entrypoint::elf());
        assert_eq!(members[3].data, w.krun_sev_json);
    }

    #[test]
    fn writes_an_archive_and_a_directory_with_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![7u8; 3000]).unwrap();
        let w = Workload {
            krun_sev_json: b"{}",
            disk: &disk,
        };
        let archive = dir.path().join("img.tar");
        let a = write(&Target::Archive(archive.clone()), "img", &w).unwrap();
        let d = write(&Target::Dir(dir.path().join("layout")), "img", &w).unwrap();
        assert_eq!(a, d);
        assert!(a.starts_with("sha256:"));
        let index = std::fs::read(dir.path().join("layout/index.json")).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][layout::REF_NAME],
            "img:latest"
        );
        assert_eq!(index["manifests"][0]["digest"], a.as_str());
        // A missing disk is named.
        let gone = dir.path().join("nope.img");
        let err = write(
            &Target::Archive(dir.path().join("x.tar")),
            "img",
            &Workload {
                krun_sev_json: b"{}",
                disk: &gone,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope.img"), "{err}");
        assert!(!dir.path().join("x.tar").exists());
    }
}
