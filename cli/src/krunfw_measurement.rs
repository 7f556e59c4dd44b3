//! `krunfw_measurement -c CPUS -m MIB BUNDLE`: the launch digests of libkrunfw's tool of the
//! same name, for the call `buildah mkcw --attestation-url` makes before it registers an
//! image (docs/compatibility.md, "buildah mkcw").
//!
//! BUNDLE is the guest bundle directory (`$(LIBDIR)/krun-sev`) or the bundle as a library
//! (`libkrunfw-sev.so.4`, what buildah finds by default). The digests are those of the launch
//! crun makes of an image with that many vCPUs and MiB of RAM, the default vCPU model and no
//! binding: the "unbound" digests, which a broker given the bundle accepts for a launch
//! bound to it (docs/measurement.md, "Unbound digests"). Output, as libkrunfw's tool: a
//! heading `Measurements for 2 vCPU(s) and 512 MB of RAM`, then `SEV:`, `SEV-ES:` and `SNP:`
//! lines, each a tab and the hex digest.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use krun_bundle::{Bundle, BundleError, BundleFiles};
use krun_psp_model::ModelIdentity;
use krun_sev::launch::{self, MeasureRequest};
use krun_sev::resources::MachineConfig;
use krun_sev::tee::vcpu_model::VcpuModel;
use krun_sev::tee::TeeMode;

const USAGE: &str = "usage: krunfw_measurement -c CPUS -m MIB BUNDLE
  BUNDLE: the guest bundle directory (e.g. /usr/lib/krun-sev) or libkrunfw-sev.so.4";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    cpus: u8,
    ram_mib: u32,
    bundle: PathBuf,
}

/// getopt-style parsing as libkrunfw's tool: `-c N`, `-cN`, `-m N`, `-mN`, one operand.
fn parse_args(args: &[String]) -> Result<Args, String> {
    let (mut cpus, mut ram, mut bundle) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.as_str() {
            "-c" | "-m" => (a.as_str(), None),
            s if s.starts_with("-c") || s.starts_with("-m") => (&s[..2], Some(&s[2..])),
            "--help" | "-h" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                if bundle.replace(PathBuf::from(s)).is_some() {
                    return Err("more than one BUNDLE given".into());
                }
                continue;
            }
        };
        let value = match inline {
            Some(v) => v.to_owned(),
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{flag} {value}: not a number"))?;
        match flag {
            "-c" => cpus = Some(n),
            _ => ram = Some(n),
        }
    }
    let (Some(cpus), Some(ram), Some(bundle)) = (cpus, ram, bundle) else {
        return Err("-c, -m and BUNDLE are required".into());
    };
    let machine = MachineConfig::new(
        u32::try_from(cpus).map_err(|_| format!("-c {cpus}: too many vCPUs"))?,
        ram,
    )
    .map_err(|e| e.to_string())?;
    Ok(Args {
        cpus: machine.vcpus,
        ram_mib: machine.ram_mib,
        bundle,
    })
}

/// A library loaded with `dlopen`, closed on drop.
struct Library(*mut libc::c_void);

impl Library {
    fn symbol(&self, name: &CStr) -> Option<*mut libc::c_void> {
        // SAFETY: `self.0` is a live dlopen handle and `name` a C string.
        let p = unsafe { libc::dlsym(self.0, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen; no pointer into the library outlives it
        // (`LibraryFiles::read` copies the bytes).
        unsafe { libc::dlclose(self.0) };
    }
}

type GetVersion = unsafe extern "C" fn() -> c_int;
type GetFile = unsafe extern "C" fn(*const c_char, *mut usize) -> *const c_char;

/// The ABI `krunfw_get_version` of this project's library returns.
const KRUNFW_ABI: c_int = 4;

/// The bundle embedded in a `libkrunfw-sev.so.4` built by `make krunfw`.
struct LibraryFiles {
    path: PathBuf,
    get_file: GetFile,
    // Declared last: dropped after `get_file` can no longer be called.
    _lib: Library,
}

impl LibraryFiles {
    fn open(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{shown}: path contains a NUL byte"))?;
        // SAFETY: `c_path` is a valid C string. Loading runs the library's initializers,
        // as libkrunfw's own tool does; the caller named the library to measure.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("cannot load {shown}: {}", dl_error()));
        }
        let lib = Library(handle);
        let version = lib.symbol(c"krunfw_get_version").map(|p| {
            // SAFETY: the symbol is libkrunfw's `int krunfw_get_version(void)`.
            let f = unsafe { std::mem::transmute::<*mut libc::c_void, GetVersion>(p) };
            // SAFETY: takes no arguments and only returns a constant.
            unsafe { f() }
        });
        match (version, lib.symbol(c"krunfw_sev_get_file")) {
            (Some(KRUNFW_ABI), Some(p)) => Ok(LibraryFiles {
                path: path.to_owned(),
                // SAFETY: the symbol is `const char *krunfw_sev_get_file(const char *,
                // size_t *)` (firmware/krunfw/krunfw.c) in a library of ABI 4.
                get_file: unsafe { std::mem::transmute::<*mut libc::c_void, GetFile>(p) },
                _lib: lib,
            }),
            (Some(v), Some(_)) => Err(format!(
                "{shown} has firmware ABI {v}; this tool reads ABI {KRUNFW_ABI}"
            )),
            _ => Err(format!(
                "{shown} is not libkrun-sev's guest bundle library (no krunfw_sev_get_file): \
                 give the bundle directory or the libkrunfw-sev.so.4 `make install` writes"
            )),
        }
    }
}

impl BundleFiles for LibraryFiles {
    fn dir(&self) -> &Path {
        &self.path
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, BundleError> {
        let missing = || BundleError::Read {
            path: self.path.join(name),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in the library"),
        };
        let c_name = CString::new(name).map_err(|_| missing())?;
        let mut size = 0usize;
        // SAFETY: `get_file` is the library's function; both pointers are valid for the call.
        let data = unsafe { (self.get_file)(c_name.as_ptr(), &mut size) };
        if data.is_null() {
            return Err(missing());
        }
        let take = size.min(usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX));
        // SAFETY: the library returned `size` readable bytes at `data` in its read-only data,
        // mapped while `handle` is open; only `take <= size` of them are copied.
        Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), take) }.to_vec())
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a C string valid until the next dl* call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "unknown error".into();
    }
    // SAFETY: non-null, NUL-terminated, read before any other dl* call.
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

fn load_bundle(path: &Path) -> Result<Bundle, String> {
    let loaded = if path.is_dir() {
        Bundle::load(path)
    } else if path.is_file() {
        Bundle::load_from(&LibraryFiles::open(path)?)
    } else {
        return Err(format!(
            "{}: no such bundle directory or library",
            path.display()
        ));
    };
    loaded.map_err(|e| krun_sev::capi::error_chain(&e))
}

/// The three lines' digests for `args`, in libkrunfw's order.
fn measurements(args: &Args) -> Result<Vec<(&'static str, String)>, String> {
    let bundle = load_bundle(&args.bundle)?;
    // The digest does not depend on the model's keys: any identity computes it.
    let id = Arc::new(ModelIdentity::generate().map_err(|e| e.to_string())?);
    let mut out = Vec::new();
    for (label, mode) in [
        ("SEV", TeeMode::Sev),
        ("SEV-ES", TeeMode::SevEs),
        ("SNP", TeeMode::Snp),
    ] {
        let req = MeasureRequest {
            port_map: Default::default(),
            mode,
            vcpus: args.cpus,
            ram_mib: args.ram_mib,
            bundle_dir: args.bundle.clone(),
            data_disk: false,
            vcpu_model: VcpuModel::default(),
            binding: None,
        };
        let m = launch::measurement_of_host_json(&id, &bundle, &req.host_json())
            .map_err(|e| krun_sev::capi::error_chain(&e))?;
        out.push((label, m.digest_hex()));
    }
    Ok(out)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("krunfw_measurement: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 1 });
        }
    };
    match measurements(&args) {
        Ok(lines) => {
            println!(
                "Measurements for {} vCPU(s) and {} MB of RAM",
                args.cpus, args.ram_mib
            );
            for (label, hex) in lines {
                println!("{label}:\t{hex}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("krunfw_measurement: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn buildah_s_call_parses() {
        let want = Args {
            cpus: 2,
            ram_mib: 512,
            bundle: "/usr/lib/libkrunfw-sev.so.4".into(),
        };
        assert_eq!(
            args(&["-c", "2", "-m", "512", "/usr/lib/libkrunfw-sev.so.4"]).unwrap(),
            want
        );
        assert_eq!(
            args(&["/usr/lib/libkrunfw-sev.so.4", "-m512", "-c2"]).unwrap(),
            want
        );
    }

    #[test]
    fn bad_calls_are_refused() {
        for bad in [
            &["-c", "2", "-m", "512"][..],
            &["-c", "2", "/lib"],
            &["-c", "x", "-m", "512", "/lib"],
            &["-c", "0", "-m", "512", "/lib"],
            &["-c", "999", "-m", "512", "/lib"],
            &["-c", "2", "-m", "0", "/lib"],
            &["-c", "2", "-m", "512", "/lib", "/other"],
            &["-x", "/lib"],
            &["-c"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
