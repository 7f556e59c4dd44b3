//! Argument validation of every C API function, called through the C ABI.
#![allow(clippy::undocumented_unsafe_blocks)] // Every call passes valid or NULL pointers.
#![allow(clippy::unwrap_used)]

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::ptr;

use krun_sev::capi::*;

const EINVAL: i32 = -libc::EINVAL;
const ENOENT: i32 = -libc::ENOENT;

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn not_utf8() -> CString {
    CString::new(vec![b'/', 0xff, 0xfe]).unwrap()
}

/// A NULL-terminated array of C strings that owns its storage.
struct CArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CArray {
    fn new(items: &[&str]) -> Self {
        Self::from_cstrings(items.iter().map(|s| cs(s)).collect())
    }
    fn from_cstrings(strings: Vec<CString>) -> Self {
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(ptr::null());
        CArray {
            _strings: strings,
            ptrs,
        }
    }
    fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

fn ctx() -> u32 {
    let id = krun_create_ctx();
    assert!(id >= 0, "krun_create_ctx returned {id}");
    id as u32
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("krun-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// An ID no live context uses.
const UNKNOWN: u32 = 0x7fff_fff0;

#[test]
fn log_level() {
    for level in 0..=5 {
        assert_eq!(krun_set_log_level(level), 0);
    }
    assert_eq!(krun_set_log_level(3), 0);
    assert_eq!(krun_set_log_level(6), EINVAL);
    assert_eq!(krun_set_log_level(u32::MAX), EINVAL);
}

#[test]
fn contexts() {
    let a = ctx();
    let b = ctx();
    assert_ne!(a, b);
    assert_eq!(krun_free_ctx(a), 0);
    assert_eq!(krun_free_ctx(a), ENOENT);
    assert_eq!(krun_free_ctx(UNKNOWN), ENOENT);
    assert_eq!(krun_free_ctx(b), 0);
}

#[test]
fn vm_config() {
    let c = ctx();
    assert_eq!(krun_set_vm_config(c, 2, 1024), 0);
    assert_eq!(krun_set_vm_config(c, 32, 512), 0);
    assert_eq!(krun_set_vm_config(c, 0, 512), EINVAL);
    assert_eq!(krun_set_vm_config(c, 33, 512), EINVAL);
    assert_eq!(krun_set_vm_config(c, 255, 512), EINVAL);
    assert_eq!(krun_set_vm_config(c, 1, 0), EINVAL);
    assert_eq!(krun_set_vm_config(c, 1, u32::MAX), EINVAL);
    assert_eq!(krun_set_vm_config(UNKNOWN, 1, 512), ENOENT);
    krun_free_ctx(c);
}

#[test]
fn unsupported_functions() {
    let c = ctx();
    let root = cs("/");
    assert_eq!(krun_set_root(c, root.as_ptr()), -libc::ENOTSUP);
    assert_eq!(krun_set_root(c, ptr::null()), -libc::ENOTSUP);
    assert_eq!(krun_set_root(UNKNOWN, root.as_ptr()), ENOENT);
    let vols = CArray::new(&["/a:/b"]);
    assert_eq!(krun_set_mapped_volumes(c, vols.as_ptr()), -libc::ENOTSUP);
    assert_eq!(krun_set_mapped_volumes(UNKNOWN, vols.as_ptr()), ENOENT);
    krun_free_ctx(c);
}

#[test]
fn disks() {
    let c = ctx();
    let p = cs("/disk.img");
    let bad = not_utf8();
    let empty = cs("");
    unsafe {
        assert_eq!(krun_set_root_disk(c, p.as_ptr()), 0);
        assert_eq!(krun_set_root_disk(c, ptr::null()), EINVAL);
        assert_eq!(krun_set_root_disk(c, bad.as_ptr()), EINVAL);
        assert_eq!(krun_set_root_disk(c, empty.as_ptr()), EINVAL);
        assert_eq!(krun_set_root_disk(UNKNOWN, p.as_ptr()), ENOENT);
        assert_eq!(krun_set_data_disk(c, p.as_ptr()), 0);
        assert_eq!(krun_set_data_disk(c, ptr::null()), EINVAL);
        assert_eq!(krun_set_data_disk(c, bad.as_ptr()), EINVAL);
        assert_eq!(krun_set_data_disk(UNKNOWN, p.as_ptr()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn port_map() {
    let c = ctx();
    unsafe {
        assert_eq!(
            krun_set_port_map(c, ptr::null()),
            0,
            "NULL exposes listening ports"
        );
        assert_eq!(krun_set_port_map(c, CArray::new(&[]).as_ptr()), 0);
        assert_eq!(
            krun_set_port_map(c, CArray::new(&["8080:80", "2222:22"]).as_ptr()),
            0
        );
        for bad in [
            &["80"][..],
            &["a:b"],
            &["0:80"],
            &["70000:80"],
            &["1:2:3"],
            &["8080:80", "8080:81"],
        ] {
            assert_eq!(
                krun_set_port_map(c, CArray::new(bad).as_ptr()),
                EINVAL,
                "{bad:?}"
            );
        }
        let bad = CArray::from_cstrings(vec![cs("1:1"), not_utf8()]);
        assert_eq!(krun_set_port_map(c, bad.as_ptr()), EINVAL);
        assert_eq!(krun_set_port_map(UNKNOWN, ptr::null()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn add_net_unixstream() {
    use std::io::Read;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;
    const DHCP: u32 = 1 << 1;
    let mut mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
    let c = ctx();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let fd = ours.into_raw_fd();
    let path = cs("/tmp/passt.sock");
    unsafe {
        let m = mac.as_mut_ptr();
        // Both or neither endpoint, no MAC, a multicast MAC, unknown flags, an empty or
        // non-UTF-8 path, an unknown context.
        assert_eq!(
            krun_add_net_unixstream(c, path.as_ptr(), fd, m, 0, 0),
            EINVAL
        );
        assert_eq!(krun_add_net_unixstream(c, ptr::null(), -1, m, 0, 0), EINVAL);
        assert_eq!(
            krun_add_net_unixstream(c, ptr::null(), fd, ptr::null_mut(), 0, 0),
            EINVAL
        );
        let mut multicast = [1u8, 0, 0x5e, 0, 0, 1];
        assert_eq!(
            krun_add_net_unixstream(c, ptr::null(), fd, multicast.as_mut_ptr(), 0, 0),
            EINVAL
        );
        for flags in [1, 4, DHCP | 1, u32::MAX] {
            assert_eq!(
                krun_add_net_unixstream(c, ptr::null(), fd, m, 0, flags),
                EINVAL,
                "flags {flags:#x}"
            );
        }
        assert_eq!(
            krun_add_net_unixstream(c, cs("").as_ptr(), -1, m, 0, 0),
            EINVAL
        );
        assert_eq!(
            krun_add_net_unixstream(c, not_utf8().as_ptr(), -1, m, 0, 0),
            EINVAL
        );
        assert_eq!(
            krun_add_net_unixstream(UNKNOWN, ptr::null(), fd, m, 0, 0),
            ENOENT
        );
        // crun 1.28+'s call (COMPAT_NET_FEATURES, DHCP); then a second device is refused.
        assert_eq!(
            krun_add_net_unixstream(c, ptr::null(), fd, m, 0x4c83, DHCP),
            0
        );
        assert_eq!(
            krun_add_net_unixstream(c, path.as_ptr(), -1, m, 0, 0),
            -libc::EEXIST
        );
    }
    // The failed calls left the fd open; the context owns it and closes it when freed.
    peer.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(peer.read(&mut b).is_err(), "the socket closed too early");
    assert_eq!(krun_free_ctx(c), 0);
    assert_eq!(peer.read(&mut b).unwrap(), 0);

    // A path (connected at launch) with flags 0.
    let c = ctx();
    unsafe {
        assert_eq!(
            krun_add_net_unixstream(c, path.as_ptr(), -1, mac.as_mut_ptr(), 0, 0),
            0
        );
    }
    krun_free_ctx(c);
}

#[test]
fn rlimits() {
    let c = ctx();
    unsafe {
        assert_eq!(
            krun_set_rlimits(
                c,
                CArray::new(&["7=1024:4096", "RLIMIT_NPROC=10:20"]).as_ptr()
            ),
            0
        );
        assert_eq!(krun_set_rlimits(c, CArray::new(&[]).as_ptr()), 0);
        assert_eq!(krun_set_rlimits(c, ptr::null()), EINVAL);
        for bad in ["7", "7=1", "RLIMIT_BOGUS=1:1", "99=1:1", "7=5:4", "7=x:1"] {
            assert_eq!(
                krun_set_rlimits(c, CArray::new(&[bad]).as_ptr()),
                EINVAL,
                "{bad}"
            );
        }
        let bad = CArray::from_cstrings(vec![not_utf8()]);
        assert_eq!(krun_set_rlimits(c, bad.as_ptr()), EINVAL);
        assert_eq!(krun_set_rlimits(UNKNOWN, CArray::new(&[]).as_ptr()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn workdir() {
    let c = ctx();
    let w = cs("/srv");
    let empty = cs("");
    let bad = not_utf8();
    unsafe {
        assert_eq!(krun_set_workdir(c, w.as_ptr()), 0);
        assert_eq!(krun_set_workdir(c, ptr::null()), EINVAL);
        assert_eq!(krun_set_workdir(c, empty.as_ptr()), EINVAL);
        assert_eq!(krun_set_workdir(c, bad.as_ptr()), EINVAL);
        assert_eq!(krun_set_workdir(UNKNOWN, w.as_ptr()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn exec_and_env() {
    let c = ctx();
    let path = cs("/bin/sh");
    let argv = CArray::new(&["-c", "echo hi"]);
    let envp = CArray::new(&["A=1", "PATH=/bin"]);
    let bad_env = CArray::new(&["NOEQUALS"]);
    let bad_utf8 = CArray::from_cstrings(vec![cs("-c"), not_utf8()]);
    let bad = not_utf8();
    unsafe {
        assert_eq!(
            krun_set_exec(c, path.as_ptr(), argv.as_ptr(), envp.as_ptr()),
            0
        );
        assert_eq!(
            krun_set_exec(c, path.as_ptr(), ptr::null(), ptr::null()),
            0,
            "NULL argv and inherited env"
        );
        assert_eq!(
            krun_set_exec(c, ptr::null(), argv.as_ptr(), envp.as_ptr()),
            EINVAL
        );
        assert_eq!(
            krun_set_exec(c, bad.as_ptr(), argv.as_ptr(), envp.as_ptr()),
            EINVAL
        );
        assert_eq!(
            krun_set_exec(c, path.as_ptr(), bad_utf8.as_ptr(), envp.as_ptr()),
            EINVAL
        );
        assert_eq!(
            krun_set_exec(c, path.as_ptr(), argv.as_ptr(), bad_env.as_ptr()),
            EINVAL
        );
        assert_eq!(
            krun_set_exec(UNKNOWN, path.as_ptr(), argv.as_ptr(), envp.as_ptr()),
            ENOENT
        );
        assert_eq!(krun_set_env(c, envp.as_ptr()), 0);
        assert_eq!(
            krun_set_env(c, ptr::null()),
            0,
            "NULL inherits the caller's environment"
        );
        assert_eq!(krun_set_env(c, bad_env.as_ptr()), EINVAL);
        assert_eq!(krun_set_env(c, bad_utf8.as_ptr()), EINVAL);
        assert_eq!(krun_set_env(UNKNOWN, envp.as_ptr()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn tee_config_files() {
    let c = ctx();
    let dir = repo_file("tee-configs");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let p = cs(path.to_str().unwrap());
            assert_eq!(
                unsafe { krun_set_tee_config_file(c, p.as_ptr()) },
                0,
                "{}",
                path.display()
            );
            loaded += 1;
        }
    }
    assert!(loaded >= 6, "expected the example configs, found {loaded}");
    // crun calls krun_set_vm_config after the TEE config file; it must still succeed.
    assert_eq!(krun_set_vm_config(c, 16, 1024), 0);

    let missing = cs("/nonexistent/krun-sev.json");
    let malformed = temp_file(
        "bad.json",
        br#"{"workload_id":"w","cpus":0,"ram_mib":1,"tee":"snp"}"#,
    );
    let malformed = cs(malformed.to_str().unwrap());
    let bad = not_utf8();
    unsafe {
        assert_eq!(krun_set_tee_config_file(c, missing.as_ptr()), ENOENT);
        assert_eq!(krun_set_tee_config_file(c, malformed.as_ptr()), EINVAL);
        assert_eq!(krun_set_tee_config_file(c, ptr::null()), EINVAL);
        assert_eq!(krun_set_tee_config_file(c, bad.as_ptr()), EINVAL);
        let good = cs(dir.join("snp.json").to_str().unwrap());
        assert_eq!(krun_set_tee_config_file(UNKNOWN, good.as_ptr()), ENOENT);
    }
    krun_free_ctx(c);
}

#[test]
fn start_enter_checks_before_consuming() {
    let c = ctx();
    assert_eq!(krun_start_enter(UNKNOWN), ENOENT);
    // No TEE config: libkrun-sev refuses, and the context survives.
    assert_eq!(krun_start_enter(c), EINVAL);
    let cfg = cs(repo_file("tee-configs/snp.json").to_str().unwrap());
    assert_eq!(unsafe { krun_set_tee_config_file(c, cfg.as_ptr()) }, 0);
    // No root disk.
    assert_eq!(krun_start_enter(c), EINVAL);
    let missing = cs("/nonexistent/disk.img");
    assert_eq!(unsafe { krun_set_root_disk(c, missing.as_ptr()) }, 0);
    assert_eq!(krun_start_enter(c), ENOENT);
    let dir = std::env::temp_dir();
    let not_a_file = cs(dir.to_str().unwrap());
    assert_eq!(unsafe { krun_set_root_disk(c, not_a_file.as_ptr()) }, 0);
    assert_eq!(krun_start_enter(c), -libc::EISDIR);
    let disk = temp_file("disk.img", &[0u8; 4096]);
    let disk = cs(disk.to_str().unwrap());
    assert_eq!(unsafe { krun_set_root_disk(c, disk.as_ptr()) }, 0);
    assert_eq!(krun_set_vm_config(c, 4, 2048), 0);
    // Everything checks out: the launch would begin, and a launch failure ends the process
    // with status 125 (tests/host_settings.rs checks that in a child process).
    assert_eq!(krun_free_ctx(c), 0);
}
