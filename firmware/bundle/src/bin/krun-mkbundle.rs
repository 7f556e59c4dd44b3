//! krun-mkbundle: packs the guest bundle directory, or verifies one.
//!
//! ```text
//! krun-mkbundle build --kernel-dir DIR --init FILE [--firmware FILE] --out DIR
//! krun-mkbundle verify DIR
//! ```
//! `--kernel-dir` is the directory firmware/build-kernel.sh prints (bzImage, kernel-version,
//! nr_cpus).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use krun_bundle::{build_initrd, write_bundle, Bundle, BundleContents, BundleError, InitrdError};

#[derive(Debug, thiserror::Error)]
enum MkbundleError {
    #[error("usage: krun-mkbundle build --kernel-dir DIR --init FILE [--firmware FILE] --out DIR | krun-mkbundle verify DIR")]
    Usage,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a CPU count")]
    NrCpus { path: PathBuf },
    #[error("cannot build the initrd")]
    Initrd(#[source] InitrdError),
    #[error("bundle step failed")]
    Bundle(#[source] BundleError),
}

#[derive(Debug, Default)]
struct BuildArgs {
    kernel_dir: Option<PathBuf>,
    init: Option<PathBuf>,
    firmware: Option<PathBuf>,
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("krun-mkbundle: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), MkbundleError> {
    match args.split_first() {
        Some((cmd, rest)) if cmd == "build" => build(&parse_build_args(rest)?),
        Some((cmd, [dir])) if cmd == "verify" => {
            let bundle = Bundle::load(Path::new(dir)).map_err(MkbundleError::Bundle)?;
            println!(
                "bundle {} ok: kernel {} (nr_cpus {}), {} files",
                dir,
                bundle.manifest.kernel_version,
                bundle.manifest.nr_cpus,
                bundle.manifest.files.len()
            );
            Ok(())
        }
        _ => Err(MkbundleError::Usage),
    }
}

fn parse_build_args(args: &[String]) -> Result<BuildArgs, MkbundleError> {
    let mut parsed = BuildArgs::default();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let value = iter.next().map(PathBuf::from).ok_or(MkbundleError::Usage)?;
        let slot = match flag.as_str() {
            "--kernel-dir" => &mut parsed.kernel_dir,
            "--init" => &mut parsed.init,
            "--firmware" => &mut parsed.firmware,
            "--out" => &mut parsed.out,
            _ => return Err(MkbundleError::Usage),
        };
        *slot = Some(value);
    }
    Ok(parsed)
}

fn read(path: &Path) -> Result<Vec<u8>, MkbundleError> {
    std::fs::read(path).map_err(|source| MkbundleError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_trimmed(path: &Path) -> Result<String, MkbundleError> {
    let text = std::fs::read_to_string(path).map_err(|source| MkbundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

fn build(args: &BuildArgs) -> Result<(), MkbundleError> {
    let (Some(kernel_dir), Some(init), Some(out)) = (&args.kernel_dir, &args.init, &args.out)
    else {
        return Err(MkbundleError::Usage);
    };
    let kernel = read(&kernel_dir.join("bzImage"))?;
    let kernel_version = read_trimmed(&kernel_dir.join("kernel-version"))?;
    let nr_cpus_path = kernel_dir.join("nr_cpus");
    let nr_cpus = read_trimmed(&nr_cpus_path)?
        .parse()
        .map_err(|_| MkbundleError::NrCpus { path: nr_cpus_path })?;
    let initrd = build_initrd(&read(init)?).map_err(MkbundleError::Initrd)?;
    let firmware = args.firmware.as_deref().map(read).transpose()?;
    let contents = BundleContents {
        kernel: &kernel,
        kernel_version: &kernel_version,
        nr_cpus,
        initrd: &initrd,
        firmware: firmware.as_deref(),
    };
    let manifest = write_bundle(out, &contents).map_err(MkbundleError::Bundle)?;
    for (name, digest) in &manifest.files {
        println!("{name}: {} bytes, sha256 {}", digest.size, digest.sha256);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builds_a_bundle_that_verifies_and_holds_the_init() {
        let dir = tempfile::tempdir().unwrap();
        let kernel_dir = dir.path().join("kernel");
        std::fs::create_dir(&kernel_dir).unwrap();
        std::fs::write(kernel_dir.join("bzImage"), b"\x7fELF kernel").unwrap();
        std::fs::write(kernel_dir.join("kernel-version"), "6.12.117\n").unwrap();
        std::fs::write(kernel_dir.join("nr_cpus"), "32\n").unwrap();
        let init = dir.path().join("krun-init");
        std::fs::write(&init, b"\x7fELF init").unwrap();
        let out = dir.path().join("bundle");

        let build_args = args(&[
            "build",
            "--kernel-dir",
            kernel_dir.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        run(&build_args).unwrap();
        run(&args(&["verify", out.to_str().unwrap()])).unwrap();

        let bundle = Bundle::load(&out).unwrap();
        assert_eq!(bundle.kernel, b"\x7fELF kernel");
        assert_eq!(bundle.manifest.kernel_version, "6.12.117");
        assert_eq!(bundle.manifest.nr_cpus, 32);
        let mut cpio = Vec::new();
        zstd::stream::read::Decoder::new(&bundle.initrd[..])
            .unwrap()
            .read_to_end(&mut cpio)
            .unwrap();
        let expected = krun_bundle::initrd::initrd_archive(b"\x7fELF init")
            .unwrap()
            .to_bytes();
        assert_eq!(cpio, expected);

        // A second build from the same inputs is byte-identical.
        let first = std::fs::read(out.join("initrd.cpio.zst")).unwrap();
        let manifest = std::fs::read(out.join("manifest.json")).unwrap();
        run(&build_args).unwrap();
        assert_eq!(std::fs::read(out.join("initrd.cpio.zst")).unwrap(), first);
        assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    }

    #[test]
    fn bad_arguments_and_inputs_are_errors() {
        assert!(matches!(run(&args(&[])), Err(MkbundleError::Usage)));
        assert!(matches!(
            run(&args(&["build", "--kernel-dir"])),
            Err(MkbundleError::Usage)
        ));
        assert!(matches!(
            run(&args(&["build", "--bogus", "x"])),
            Err(MkbundleError::Usage)
        ));
        assert!(matches!(
            run(&args(&["build", "--init", "x"])),
            Err(MkbundleError::Usage)
        ));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bzImage"), b"k").unwrap();
        std::fs::write(dir.path().join("kernel-version"), "6.12").unwrap();
        std::fs::write(dir.path().join("nr_cpus"), "many").unwrap();
        std::fs::write(dir.path().join("init"), b"i").unwrap();
        let d = dir.path().to_str().unwrap();
        let init = format!("{d}/init");
        let out = format!("{d}/out");
        let err = run(&args(&[
            "build",
            "--kernel-dir",
            d,
            "--init",
            &init,
            "--out",
            &out,
        ]))
        .unwrap_err();
        assert!(matches!(err, MkbundleError::NrCpus { .. }), "{err:?}");
        assert!(matches!(
            run(&args(&["verify", &out])),
            Err(MkbundleError::Bundle(_))
        ));
    }
}
