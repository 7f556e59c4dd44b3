//! Builds a disk image the way `buildah mkcw` lays it out, for test hosts: LUKS1
//! (aes-xts-plain64, 512-bit key, sha256, payload at 4040 sectors) over a plain file-system
//! image, zero padding to 4096 bytes, the TEE config JSON, "KRUN", u64 LE length.
//!
//! `cargo run -p krun-init --example make-test-disk -- PLAIN.img PASSPHRASE TEE.json OUT.img`
//! (TEE.json may be `-` for no footer.) PBKDF2 iterations are low: test images only.

use std::fs::File;
use std::io::{BufWriter, Write};

use krun_luks::format::{format_luks1, write_encrypted, Luks1Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [plain, pass, tee, out] = args.as_slice() else {
        return Err("usage: make-test-disk PLAIN.img PASSPHRASE TEE.json|- OUT.img".into());
    };
    let opts = Luks1Options {
        keyslot_iterations: 1000,
        ..Luks1Options::default()
    };
    let vol = format_luks1(pass.as_bytes(), &opts)?;
    let mut w = BufWriter::new(File::create(out)?);
    let payload = write_encrypted(&vol, File::open(plain)?, &mut w, &mut |_| {})?;
    let mut written = vol.header.len() as u64 + payload;
    if tee != "-" {
        let json = std::fs::read(tee)?;
        let json = json.trim_ascii_end();
        let footer = krun_footer::footer_bytes(json, written, 4096);
        w.write_all(&footer)?;
        written += footer.len() as u64;
    }
    w.flush()?;
    eprintln!("{out}: {written} bytes");
    Ok(())
}
