//! Payload encryption throughput of `write_encrypted` (what `krun-sev mkcw` spends its time
//! on), against `cryptsetup benchmark` (kernel crypto) when that runs here.
//!
//! `cargo run --release -p krun-luks --example throughput [MiB]`

use std::io::{Read, Write};
use std::time::Instant;

use krun_luks::format::{format_luks1, write_encrypted, Luks1Options};

struct Zeros(u64);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.0).unwrap_or(usize::MAX).min(buf.len());
        buf[..n].fill(0);
        self.0 -= n as u64;
        Ok(n)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let opts = Luks1Options {
        keyslot_iterations: 1000,
        ..Luks1Options::default()
    };
    let vol = format_luks1(b"bench", &opts)?;
    let start = Instant::now();
    write_encrypted(&vol, Zeros(mib << 20), std::io::sink(), &mut |_| {})?;
    let ours = mib as f64 / start.elapsed().as_secs_f64();
    println!("krun-luks aes-xts-plain64 512-bit encrypt: {ours:.0} MiB/s ({mib} MiB)");
    let out = std::process::Command::new("cryptsetup")
        .args(["benchmark", "-c", "aes-xts", "-s", "512"])
        .output();
    let kernel = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .find(|l| l.trim_start().starts_with("aes-xts"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
    });
    match kernel {
        Some(k) => println!(
            "cryptsetup benchmark (kernel): {k:.0} MiB/s; ratio ours/kernel {:.2}",
            ours / k
        ),
        None => println!("cryptsetup benchmark unavailable here; no baseline ratio"),
    }
    std::io::stdout().flush()?;
    Ok(())
}
