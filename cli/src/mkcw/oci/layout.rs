//! The OCI image layout (image-spec 1.x, "image-layout.md"): `oci-layout`, `index.json` naming
//! the image with an `org.opencontainers.image.ref.name` annotation, and the content-addressed
//! blobs under `blobs/sha256/` (manifest, config, one uncompressed layer). Written as a
//! directory or as a tar of that directory (what `podman load -i` and `oci-archive:` read).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::tar::TarWriter;
use super::OciError;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed tar layer (the disk image is encrypted: gzip would not shrink it).
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A blob's identity: its lowercase hex SHA-256 and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobId {
    pub sha256: String,
    pub size: u64,
}

impl BlobId {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: hex(&Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }

    /// The blob's path inside the layout.
    pub fn path(&self) -> String {
        format!("blobs/sha256/{}", self.sha256)
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": self.digest(), "size": self.size })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what goes through it.
#[derive(Debug)]
pub struct Hashing<W> {
    pub inner: W,
    hash: Sha256,
    size: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    pub fn id(&self) -> BlobId {
        BlobId {
            sha256: hex(&self.hash.clone().finalize()),
            size: self.size,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The small JSON documents of one image whose single layer is `layer`.
#[derive(Debug)]
pub struct Documents {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub index: Vec<u8>,
}

impl Documents {
    /// `entrypoint` is the image config's `Entrypoint`; `tag` the name podman gives it.
    pub fn new(layer: &BlobId, entrypoint: &[&str], tag: &str) -> Result<Self, OciError> {
        let config = to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": entrypoint },
            "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
        }))?;
        let manifest = to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": BlobId::of(&config).descriptor(MEDIA_CONFIG),
            "layers": [layer.descriptor(MEDIA_LAYER)],
        }))?;
        let mut manifest_desc = BlobId::of(&manifest).descriptor(MEDIA_MANIFEST);
        manifest_desc["annotations"] = json!({ REF_NAME: tag });
        manifest_desc["platform"] = json!({ "architecture": "amd64", "os": "linux" });
        let index = to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [manifest_desc],
        }))?;
        Ok(Self {
            config,
            manifest,
            index,
        })
    }

    pub fn manifest_id(&self) -> BlobId {
        BlobId::of(&self.manifest)
    }
}

fn to_vec(value: &serde_json::Value) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(value).map_err(|e| OciError::Json(e.to_string()))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OciError + '_ {
    move |e| OciError::Io(path.display().to_string(), e)
}

/// Writes the layout as the directory `dir`, which must be absent or empty. It is filled
/// beside it first and renamed into place, so a failure leaves no half-written layout.
/// `write_layer` writes the layer tar (once, hashed on the way).
pub fn write_dir(
    dir: &Path,
    entrypoint: &[&str],
    tag: &str,
    write_layer: &dyn Fn(&mut dyn Write) -> io::Result<()>,
) -> Result<BlobId, OciError> {
    if let Ok(mut entries) = fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(OciError::NotEmpty(dir.display().to_string()));
        }
    }
    let parent = parent_of(dir);
    let work = tempfile::Builder::new()
        .prefix(".oci-")
        .tempdir_in(parent)
        .map_err(io_err(parent))?;
    let blobs = work.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let partial = blobs.join(".layer.partial");
    let file = fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut out = Hashing::new(BufWriter::new(file));
    write_layer(&mut out)
        .and_then(|()| out.flush())
        .map_err(io_err(&partial))?;
    let layer = out.id();
    fs::rename(&partial, work.path().join(layer.path())).map_err(io_err(&partial))?;
    let docs = Documents::new(&layer, entrypoint, tag)?;
    for bytes in [&docs.config, &docs.manifest] {
        let path = work.path().join(BlobId::of(bytes).path());
        fs::write(&path, bytes).map_err(io_err(&path))?;
    }
    for (name, bytes) in [("index.json", &docs.index[..]), ("oci-layout", OCI_LAYOUT)] {
        let path = work.path().join(name);
        fs::write(&path, bytes).map_err(io_err(&path))?;
    }
    // tempdir makes 0700; a layout directory is an ordinary one.
    fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io_err(work.path()))?;
    // rename replaces an empty directory and refuses a non-empty one.
    fs::rename(work.path(), dir).map_err(io_err(dir))?;
    let _ = work.keep();
    Ok(docs.manifest_id())
}

/// Writes the layout as the tar archive `file` (replaced atomically). The layer is
/// generated twice: once to learn its digest, which names its member, then into the
/// archive; the two passes must agree.
pub fn write_archive(
    file: &Path,
    entrypoint: &[&str],
    tag: &str,
    write_layer: &dyn Fn(&mut dyn Write) -> io::Result<()>,
) -> Result<BlobId, OciError> {
    let mut sink = Hashing::new(io::sink());
    write_layer(&mut sink).map_err(io_err(file))?;
    let layer = sink.id();
    let docs = Documents::new(&layer, entrypoint, tag)?;

    let parent = parent_of(file);
    let tmp = tempfile::Builder::new()
        .prefix(".oci-archive-")
        .tempfile_in(parent)
        .map_err(io_err(parent))?;
    let mut tar = TarWriter::new(BufWriter::new(tmp.as_file()));
    let mut blobs: Vec<(BlobId, Option<&[u8]>)> = vec![
        (BlobId::of(&docs.config), Some(&docs.config)),
        (docs.manifest_id(), Some(&docs.manifest)),
        (layer.clone(), None),
    ];
    blobs.sort_by(|a, b| a.0.sha256.cmp(&b.0.sha256));
    let second_pass = (|| -> io::Result<BlobId> {
        tar.dir("blobs/", 0o755)?;
        tar.dir("blobs/sha256/", 0o755)?;
        let mut again = None;
        for (id, bytes) in &blobs {
            match bytes {
                Some(bytes) => tar.file(&id.path(), 0o644, bytes)?,
                None => tar.file_with(&id.path(), 0o644, id.size, |w| {
                    let mut hashing = Hashing::new(w);
                    write_layer(&mut hashing)?;
                    again = Some(hashing.id());
                    Ok(())
                })?,
            }
        }
        tar.file("index.json", 0o644, &docs.index)?;
        tar.file("oci-layout", 0o644, OCI_LAYOUT)?;
        let (out, _) = tar.finish()?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        Ok(again.unwrap_or_else(|| layer.clone()))
    })();
    let again = second_pass.map_err(io_err(file))?;
    if again != layer {
        return Err(OciError::Changed(file.display().to_string()));
    }
    tmp.persist(file)
        .map_err(|e| OciError::Io(file.display().to_string(), e.error))?;
    Ok(docs.manifest_id())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::Value;

    use super::*;

    fn layer_bytes(w: &mut dyn Write) -> io::Result<()> {
        let mut t = TarWriter::new(w);
        t.file("hello", 0o644, b"hi\n")?;
        t.finish().map(|_| ())
    }

    fn layer_vec() -> Vec<u8> {
        let mut v = Vec::new();
        layer_bytes(&mut v).unwrap();
        v
    }

    /// Checks a layout given as (path, bytes) pairs: every document parses, every
    /// descriptor's digest and size match the blob's bytes.
    fn check_layout(get: &dyn Fn(&str) -> Vec<u8>, tag: &str) {
        let layout: Value = serde_json::from_slice(&get("oci-layout")).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value = serde_json::from_slice(&get("index.json")).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_INDEX);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let m = &manifests[0];
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(m["annotations"][REF_NAME], tag);
        let blob = |desc: &Value| {
            let digest = desc["digest"].as_str().unwrap();
            let hexd = digest.strip_prefix("sha256:").unwrap();
            let bytes = get(&format!("blobs/sha256/{hexd}"));
            assert_eq!(hex(&Sha256::digest(&bytes)), hexd, "digest of {digest}");
            assert_eq!(desc["size"].as_u64().unwrap(), bytes.len() as u64);
            bytes
        };
        let manifest: Value = serde_json::from_slice(&blob(m)).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
        let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], json!(["/entrypoint"]));
        assert_eq!(config["rootfs"]["type"], "layers");
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_LAYER);
        let layer = blob(&layers[0]);
        assert_eq!(layer, layer_vec());
        // Uncompressed: the diff_id is the layer's digest.
        assert_eq!(config["rootfs"]["diff_ids"], json!([layers[0]["digest"]]));
    }

    #[test]
    fn directory_layout_documents_parse_and_digests_match() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img");
        let tag = "localhost/test:1";
        let manifest = write_dir(&out, &["/entrypoint"], tag, &layer_bytes).unwrap();
        check_layout(&|p| fs::read(out.join(p)).unwrap(), tag);
        let on_disk = fs::read(out.join(manifest.path())).unwrap();
        assert_eq!(BlobId::of(&on_disk), manifest);
        // No leftovers of the writing.
        let names: Vec<_> = fs::read_dir(out.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| n.len() == 64));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A non-empty directory is refused, and left alone.
        let err = write_dir(&out, &["/entrypoint"], tag, &layer_bytes).unwrap_err();
        assert!(matches!(err, OciError::NotEmpty(_)), "{err}");
        check_layout(&|p| fs::read(out.join(p)).unwrap(), tag);
    }

    #[test]
    fn archive_holds_the_same_layout_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let tag = "localhost/test:latest";
        let ma = write_archive(&a, &["/entrypoint"], tag, &layer_bytes).unwrap();
        let mb = write_archive(&b, &["/entrypoint"], tag, &layer_bytes).unwrap();
        assert_eq!(ma, mb);
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes, fs::read(&b).unwrap());
        let members = super::super::tar::list(&bytes);
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(names[5..], ["index.json", "oci-layout"]);
        let mut blob_names = names[2..5].to_vec();
        blob_names.sort_unstable();
        assert_eq!(blob_names, names[2..5]);
        check_layout(
            &|p| {
                members
                    .iter()
                    .find(|m| m.name == p)
                    .unwrap_or_else(|| panic!("{p} missing"))
                    .data
                    .clone()
            },
            tag,
        );
    }

    #[test]
    fn a_layer_that_changes_between_passes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.tar");
        let calls = std::cell::Cell::new(0u8);
        let changing = |w: &mut dyn Write| {
            calls.set(calls.get() + 1);
            let mut t = TarWriter::new(w);
            t.file("x", 0o644, &[calls.get()])?;
            t.finish().map(|_| ())
        };
        let err = write_archive(&file, &["/entrypoint"], "t:1", &changing).unwrap_err();
        assert!(matches!(err, OciError::Changed(_)), "{err}");
        assert!(!file.exists());
    }
}
