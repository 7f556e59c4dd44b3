//! The committed `resetvec.bin` is what `build.sh` makes from `resetvec.asm` (needs nasm).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_binary_matches_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("krun-resetvec-{}.bin", std::process::id()));
    let status = Command::new("sh")
        .arg(dir.join("build.sh"))
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run build.sh: {e}"));
    assert!(
        status.success(),
        "build.sh failed; it needs nasm (Debian: apt-get install nasm)"
    );
    let built = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let committed = std::fs::read(dir.join("resetvec.bin")).unwrap();
    assert!(
        built == committed,
        "resetvec.bin is stale: run firmware/resetvec/build.sh and commit the result"
    );
    assert_eq!(&committed[..], &krun_resetvec::IMAGE[..]);
}
